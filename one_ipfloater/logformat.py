"""Log line formats shared by both sides (the daemon and the front-end's hooks and CLI).

`LOG_FORMAT = text` keeps the usual human lines; `json` writes one JSON object a line
for operators who ship logs to a collector: it needs no parsing rules, and a message
with a newline in it stays one record. The fields of the object are `time`, `level`,
`logger`, `message`, the `exception` text when there is one, and whatever the caller
passed as `extra={...}`: those stay typed values, so collectors can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("text", "json")

# Every attribute a LogRecord has of its own; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line; `extra` fields are kept (a value JSON cannot hold as it is
    becomes its str())."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(log_format: str, text_format: str) -> logging.Formatter:
    """The formatter for `log_format` ("text" uses `text_format`)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(text_format)
    raise ValueError(f"LOG_FORMAT: {log_format!r} is not text or json")


def setup(level, log_format: str, text_format: str, stream=None) -> None:
    """logging.basicConfig with the chosen format: to `stream` (stderr) at `level`; like
    basicConfig, nothing changes when the root logger has handlers already."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format, text_format))
    handler.ipfloater_text_format = text_format
    logging.basicConfig(level=level, handlers=[handler])


def use_format(log_format: str) -> None:
    """Switch the handlers `setup` made to `log_format` (a hook learns it from its
    config file, read after its first log lines may have been written)."""
    for handler in logging.getLogger().handlers:
        text_format = getattr(handler, "ipfloater_text_format", None)
        if text_format is not None:
            handler.setFormatter(formatter(log_format, text_format))


def json_line(level: int, logger: str, message: str, **fields) -> str:
    """One JSON log line written without a handler (a hook's closing result line)."""
    record = logging.LogRecord(logger, level, "", 0, message, (), None)
    record.__dict__.update(fields)
    return JsonFormatter().format(record)


def parse_format(key: str, value: str) -> str:
    """A LOG_FORMAT value from a config file; ValueError naming the key and the value."""
    word = value.strip().lower()
    if word not in FORMATS:
        raise ValueError(f"{key}: {value!r} is not text or json")
    return word
