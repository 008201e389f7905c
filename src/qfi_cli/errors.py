"""User-facing errors: the CLI prints their message on one line and exits non-zero, without a traceback."""


class QfiError(Exception):
    """A mistake the user can fix (bad option, missing file, unknown name).

    >>> str(QfiError("ber must lie in [0, 1], got 2.0"))
    'ber must lie in [0, 1], got 2.0'
    """
