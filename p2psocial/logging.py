"""Structured log lines (key=value) carrying the request id of the current request.

A request that a log record carries (django.request's 4xx and 5xx warnings) is written as
its method and path only: a query string can hold what someone searched for (/search/?q=)
or where they were going, and neither belongs in a log."""

import contextvars
import json
import logging

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class StructuredFormatter(logging.Formatter):
    """`time level logger event key=value ...`, values JSON-quoted when needed."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            record.levelname,
            record.name,
            json.dumps(record.getMessage(), ensure_ascii=False),
            f"request_id={getattr(record, 'request_id', '-')}",
        ]
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key == "request" and hasattr(value, "method") and hasattr(value, "path"):
                value = f"{value.method} {value.path}"
            parts.append(f"{key}={json.dumps(value, default=str, ensure_ascii=False)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
