"""Structured logging to stderr: JSON when not on a terminal, readable when on one.

Log lines carry counts, run ids and sync names, never record keys or field values.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "warning", fmt: str = "auto") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class _HideQueryStrings(logging.Filter):
    """httpx logs every request's URL at INFO: a query string may carry a credential (Meta's
    ``access_token``) or record data, so it leaves the line as ``?...`` in any process that
    turns those logs on (found by the connector kit's leak test)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(arg) for arg in record.args)
        return True


def _without_query(value: object) -> object:
    text = str(value)
    if "://" in text and "?" in text:
        return text.split("?", 1)[0] + "?..."
    return value


logging.getLogger("httpx").addFilter(_HideQueryStrings())
