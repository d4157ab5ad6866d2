"""Structured logging to stderr: JSON when not on a terminal, readable when on one.

Log lines carry counts, run ids and sync names, never record keys or field values.

structlog (with the rich tracebacks it loads) is imported by the first line that is written,
not before: at the default level a run that goes well writes none, so a short command never
pays for it. Until then :func:`configure` only keeps the level and format, and a logger drops
what that level would have dropped.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

#: Level, format and stream given to :func:`configure` before structlog was loaded.
_pending: tuple[str, str, TextIO] | None = None


def configure(level: str = "warning", fmt: str = "auto") -> None:
    global _pending
    logging.getLevelNamesMapping()[level.upper()]  # an unknown level fails here, not later
    if "structlog" in sys.modules:
        _pending = None
        _apply(level, fmt, sys.stderr)
    else:
        _pending = (level, fmt, sys.stderr)  # the stderr of now, as when applied at once


def _apply(level: str, fmt: str, stream: TextIO) -> None:
    import structlog

    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _structlog() -> Any:
    """structlog, loaded now if need be, with the configuration it was given meanwhile
    (unless something configured it since: the last configuration wins, as before)."""
    global _pending
    import structlog

    if _pending is not None:
        pending, _pending = _pending, None
        if not structlog.is_configured():
            _apply(*pending)
    return structlog


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _Logger:
    """What ``structlog.get_logger(name)`` gives, without loading structlog before a line is
    written: ``bind`` and the level methods work before, anything else is structlog's own.

    As with structlog, an unbound logger follows the configuration of the moment at every
    line, and a bound one keeps the configuration it was bound under (or, bound before
    structlog was loaded, the one of its first line)."""

    __slots__ = ("_context", "_name", "_real")

    def __init__(self, name: str, context: dict[str, Any], real: Any = None) -> None:
        self._name = name
        self._context = context
        self._real = real

    def _logger(self) -> Any:
        if self._real is not None:
            return self._real
        proxy = _structlog().get_logger(self._name)
        if not self._context:
            return proxy
        self._real = proxy.bind(**self._context)
        return self._real

    def bind(self, **values: Any) -> _Logger:
        context = {**self._context, **values}
        if self._real is not None:
            return _Logger(self._name, context, self._real.bind(**values))
        if "structlog" in sys.modules:
            return _Logger(self._name, context, self._logger().bind(**values))
        return _Logger(self._name, context)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        level = _LEVELS.get(method)
        if level is None:
            return getattr(self._logger(), method)

        def write(event: str | None = None, *args: Any, **values: Any) -> Any:
            if "structlog" not in sys.modules and _dropped(level):
                return None
            return getattr(self._logger(), method)(event, *args, **values)

        return write


def _dropped(level: int) -> bool:
    """Whether the level given to :func:`configure` drops a line at ``level`` (never when
    unconfigured: structlog's defaults write everything)."""
    return _pending is not None and level < logging.getLevelNamesMapping()[_pending[0].upper()]


def get_logger(name: str) -> Any:
    return _Logger(name, {})


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
