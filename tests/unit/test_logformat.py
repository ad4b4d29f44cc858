"""LOG_FORMAT = text | json (logformat.py), shared by the daemon and the front-end: one JSON
object a line that parses and carries time, level, logger, message and the extra fields;
config refusals are one line naming the key and the value."""

import json
import logging
import subprocess
import sys

import pytest

from one_ipfloater.config import ConfigError, parse_config_text
from one_ipfloater.logformat import JsonFormatter, json_line
from one_ipfloater.one.config import ConfigError as OneConfigError
from one_ipfloater.one.config import parse_one_config_text

BASE = "[IPFLOATER]\nIP_POOL = 198.51.100.10-198.51.100.12\nPRIVATE_IP_RANGES = 10.77.0.0/24\n"


def record(message, *args, level=logging.WARNING, exc_info=None, **extra):
    rec = logging.getLogger("one_ipfloater.service").makeRecord(
        "one_ipfloater.service", level, __file__, 1, message, args, exc_info, extra=extra)
    return rec


def test_json_line_parses_and_carries_the_fields_and_the_extras():
    line = JsonFormatter().format(record("allocated %s\n(second line)", "198.51.100.10",
                                         public_ip="198.51.100.10", vm_id=7, ok=True))
    assert "\n" not in line  # a message with a newline stays one record
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "one_ipfloater.service"
    assert entry["message"] == "allocated 198.51.100.10\n(second line)"
    assert entry["public_ip"] == "198.51.100.10" and entry["vm_id"] == 7 and entry["ok"] is True
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-01-01T00:00:00.000Z")
    assert set(entry) == {"time", "level", "logger", "message", "public_ip", "vm_id", "ok"}


def test_json_line_keeps_the_exception_and_odd_values():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed", level=logging.ERROR, exc_info=sys.exc_info(), where=object())
    entry = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"] and entry["where"].startswith("<object")
    closing = json.loads(json_line(logging.INFO, "ipfloater-hook", "VM 3: ok", vm_id=3))
    assert closing["logger"] == "ipfloater-hook" and closing["vm_id"] == 3 and closing["level"] == "INFO"


@pytest.mark.parametrize("text, expected", [("json", "json"), (" JSON ", "json"), ("text", "text")])
def test_log_format_accepted_on_both_sides(text, expected):
    assert parse_config_text(BASE + f"LOG_FORMAT = {text}\n").log_format == expected
    assert parse_one_config_text(f"[ONE_IPFLOATER]\nLOG_FORMAT = {text}\n", env={}).log_format == expected
    assert parse_config_text(BASE).log_format == "text"
    assert parse_one_config_text("", env={}).log_format == "text"


@pytest.mark.parametrize("text", ["xml", "jsonl", ""])
def test_bad_log_format_is_one_line_naming_key_and_value(text):
    for parse, error, source in ((lambda t: parse_config_text(BASE + t), ConfigError, BASE),
                                 (lambda t: parse_one_config_text("[ONE_IPFLOATER]\n" + t, env={}),
                                  OneConfigError, None)):
        if not text and source is None:
            continue  # an empty front-end value means the default, as for its other keys
        with pytest.raises(error) as err:
            parse(f"LOG_FORMAT = {text}\n")
        message = str(err.value)
        assert f"LOG_FORMAT: {text!r} is not text or json" in message and "\n" not in message


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_daemon_log_lines_follow_log_format(tmp_path, log_format):
    """The real `ipfloaterd` (token add logs one INFO line): JSON objects with LOG_FORMAT = json,
    and (the control) the usual text line otherwise."""
    conf = tmp_path / "ipfloaterd.conf"
    conf.write_text(BASE + f"DB = {tmp_path / 'state.db'}\nTOKEN_FILE = {tmp_path / 'token'}\n"
                    f"LOG_FORMAT = {log_format}\n")
    proc = subprocess.run([sys.executable, "-m", "one_ipfloater.daemon", "--config", str(conf),
                           "token", "add", "watch", "--role", "reader"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines
    if log_format == "text":
        assert " INFO ipfloaterd: token 'watch' added (role reader)" in lines[-1]
        with pytest.raises(ValueError):
            json.loads(lines[-1])
        return
    entries = [json.loads(line) for line in lines]  # every line is one object
    assert entries[-1]["message"] == "token 'watch' added (role reader)"
    assert entries[-1]["level"] == "INFO" and entries[-1]["logger"] == "ipfloaterd" and entries[-1]["time"]
