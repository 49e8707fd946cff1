"""Logging: a rich console handler (stderr) and, for runs, a plain file handler in the run directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_CONSOLE_HANDLER_NAME = "mot-console"
_FILE_HANDLER_NAME = "mot-file"


def setup_logging(level: str | int = "INFO", run_dir: str | os.PathLike | None = None,
                  filename: str = "mot.log") -> logging.Logger:
    """Configure the ``mot`` logger once per process; add a file handler when ``run_dir`` is given.

    Calling it again with another ``run_dir`` moves the file handler there.  Returns the ``mot`` logger.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("mot")
    logger.setLevel(level if isinstance(level, int) else level.upper())
    logger.propagate = False
    if not any(h.get_name() == _CONSOLE_HANDLER_NAME for h in logger.handlers):
        console = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False,
                              log_time_format="[%X]")
        console.set_name(_CONSOLE_HANDLER_NAME)
        logger.addHandler(console)
    if run_dir is not None:
        for h in [h for h in logger.handlers if h.get_name() == _FILE_HANDLER_NAME]:
            logger.removeHandler(h)
            h.close()
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path / filename, encoding="utf-8")
        fh.set_name(_FILE_HANDLER_NAME)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(fh)
    return logger
