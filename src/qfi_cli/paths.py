"""Where the Hydra config tree lives: inside the installed package, or at the repository's top level."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The ``conf/`` directory, found from any working directory.

    >>> (conf_dir() / "config.yaml").is_file()
    True
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("qfi's conf/ directory is missing from the installation")
