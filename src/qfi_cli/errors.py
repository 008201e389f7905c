"""User-facing errors: the CLI prints their message on one line and exits non-zero, without a traceback."""

from __future__ import annotations


class QfiError(Exception):
    """A mistake the user can fix (bad option, missing file, unknown name).

    >>> str(QfiError("ber must lie in [0, 1], got 2.0"))
    'ber must lie in [0, 1], got 2.0'
    """


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-blank line of an error (or text), at most ``limit`` characters; the type name if blank.

    >>> first_line(ValueError("\\n  bad value\\nmore detail"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    text = error if isinstance(error, str) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "" if isinstance(error, str) else type(error).__name__
    return lines[0][:limit]
