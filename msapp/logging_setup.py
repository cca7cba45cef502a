"""Logging: `logs/ms.log`, rotated, every line passed through the redacting filter."""
from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler

from msapp.redact import RedactingFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
_HANDLER_NAME = "ms-file"


def configure(log_dir: str, level: str) -> None:
    """Attach one rotating, redacting file handler to the `msapp` logger (idempotent)."""
    logger = logging.getLogger("msapp")
    logger.setLevel(level)
    path = os.path.join(log_dir, "ms.log")
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            if getattr(handler, "baseFilename", None) == path:
                return
            logger.removeHandler(handler)
            handler.close()
    os.makedirs(log_dir, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
