"""Front-end configuration of the OpenNebula driver: ``/etc/one/ipfloater.conf``.

The hooks run as oneadmin on the front-end with an almost empty environment, so every
setting has a default that works on a single-host install. Resolution order per key:
the file, then the environment (only where OpenNebula's own tools read one), then the
default. Credentials are read when needed, not at load time, so that ``--help`` and
``show`` of the config work without them. Every error is one line naming key and value.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional
from ..client import ApiError, UrlError, check_url, check_urls, read_token
from .quota import parse_limit
from ..logformat import parse_format

SECTION = "ONE_IPFLOATER"
DEFAULT_PATH = "/etc/one/ipfloater.conf"
ENV_PATH = "IPFLOATER_ONE_CONF"
DEFAULT_XMLRPC = "http://localhost:2633/RPC2"
DEFAULT_URL = "http://127.0.0.1:7003"
DEFAULT_TOKEN_FILE = "/var/lib/one/.one/ipfloater_token"
DEFAULT_LOCK_DIR = "/var/lock/one-ipfloater"
SYSTEM_ONE_AUTH = "/var/lib/one/.one/one_auth"

KNOWN_KEYS = ("ONE_XMLRPC", "ONE_AUTH", "IPFLOATER_URL", "IPFLOATER_TOKEN_FILE",
              "ONE_TIMEOUT", "IPFLOATER_TIMEOUT", "LOCK_DIR", "IPFLOATER_USE_ENV_PROXY",
              "FLOATING_IP_QUOTA", "LOG_FORMAT")


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key and the value."""


@dataclass(frozen=True)
class OneConfig:
    """Validated driver settings (paths absolute, URLs http(s), timeouts in seconds)."""

    one_xmlrpc: str = DEFAULT_XMLRPC
    one_auth: str = SYSTEM_ONE_AUTH
    ipfloater_url: str = DEFAULT_URL  # several: comma-separated, in the order tried
    ipfloater_token_file: str = DEFAULT_TOKEN_FILE
    one_timeout: float = 10.0
    ipfloater_timeout: float = 10.0
    lock_dir: str = DEFAULT_LOCK_DIR
    use_env_proxy: bool = False
    floating_ip_quota: int = -1  # where a user's or group's template sets none (-1: unlimited)
    log_format: str = "text"  # the hook's log lines: text, or one JSON object a line
    source: str = "<defaults>"

    def session(self) -> str:
        """The ``user:password`` line of the ONE_AUTH file."""
        return read_one_auth(self.one_auth)

    def token(self, env: Optional[Mapping[str, str]] = None) -> str:
        """The daemon token: $IPFLOATER_TOKEN, else IPFLOATER_TOKEN_FILE."""
        try:
            return read_token(self.ipfloater_token_file, dict(os.environ if env is None else env),
                              file_setting=f"IPFLOATER_TOKEN_FILE in {self.source}")
        except ApiError as exc:
            raise ConfigError(f"IPFLOATER_TOKEN_FILE: {exc.message}") from None


def read_one_auth(path: str) -> str:
    """First non-empty line of an OpenNebula auth file, checked to look like user:password."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"ONE_AUTH: {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"ONE_AUTH: {path}: not UTF-8 text") from None
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"ONE_AUTH: {path}: expected one line 'user:password'")
    return line


def default_one_auth(env: Mapping[str, str], home: Optional[str] = None) -> str:
    """Where OpenNebula's CLI looks: $ONE_AUTH, ~/.one/one_auth, /var/lib/one/.one/one_auth."""
    if env.get("ONE_AUTH"):
        return env["ONE_AUTH"]
    home = home if home is not None else env.get("HOME") or os.path.expanduser("~")
    candidate = os.path.join(home, ".one", "one_auth") if home and home != "~" else ""
    if candidate and os.path.isfile(candidate):
        return candidate
    return SYSTEM_ONE_AUTH


def _url(key: str, value: str) -> str:
    try:
        return check_url(value.strip(), key)
    except UrlError as exc:
        raise ConfigError(str(exc)) from None


def _urls(key: str, value: str) -> str:
    """One daemon URL or several separated by commas (tried in order, failing over)."""
    try:
        return ",".join(check_urls(value.strip(), key))
    except UrlError as exc:
        raise ConfigError(str(exc)) from None


def _yes_no(key: str, value: str) -> bool:
    word = value.strip().lower()
    if word in ("yes", "true", "on", "1"):
        return True
    if word in ("no", "false", "off", "0"):
        return False
    raise ConfigError(f"{key}: {value!r} is not yes or no")


def _path(key: str, value: str) -> str:
    v = os.path.expanduser(value.strip())
    if not v.startswith("/"):
        raise ConfigError(f"{key}: {value!r} must be an absolute path")
    return v


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not a number of seconds") from None
    if not 0.1 <= number <= 600:
        raise ConfigError(f"{key}: {value!r} must be between 0.1 and 600 seconds")
    return number


def _quota(key: str, value: str) -> int:
    try:
        return parse_limit(value, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _log_format(value: str) -> str:
    try:
        return parse_format("LOG_FORMAT", value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_one_config_text(text: str, source: str = "<config>",
                          env: Optional[Mapping[str, str]] = None) -> OneConfig:
    """Parse and validate INI text; errors name ``source``, the key and the value."""
    env = os.environ if env is None else env
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str.upper
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}") from None
    if parser.sections() and not parser.has_section(SECTION):
        raise ConfigError(f"{source}: missing section [{SECTION}]")
    raw = dict(parser.items(SECTION)) if parser.has_section(SECTION) else {}
    try:
        return _build(raw, env, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _build(raw: Mapping[str, str], env: Mapping[str, str], source: str) -> OneConfig:
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(KNOWN_KEYS)})")
    given = {k: v for k, v in raw.items() if v.strip()}
    xmlrpc = given.get("ONE_XMLRPC") or env.get("ONE_XMLRPC") or DEFAULT_XMLRPC
    key = "ONE_XMLRPC" if "ONE_XMLRPC" in given else "ONE_XMLRPC (environment)"
    return OneConfig(
        one_xmlrpc=_url(key, xmlrpc),
        one_auth=_path("ONE_AUTH", given.get("ONE_AUTH") or default_one_auth(env)),
        ipfloater_url=_urls("IPFLOATER_URL", given.get("IPFLOATER_URL", DEFAULT_URL)),
        ipfloater_token_file=_path("IPFLOATER_TOKEN_FILE",
                                   given.get("IPFLOATER_TOKEN_FILE", DEFAULT_TOKEN_FILE)),
        one_timeout=_seconds("ONE_TIMEOUT", given.get("ONE_TIMEOUT", "10")),
        ipfloater_timeout=_seconds("IPFLOATER_TIMEOUT", given.get("IPFLOATER_TIMEOUT", "10")),
        lock_dir=_path("LOCK_DIR", given.get("LOCK_DIR", DEFAULT_LOCK_DIR)),
        use_env_proxy=_yes_no("IPFLOATER_USE_ENV_PROXY",
                              given.get("IPFLOATER_USE_ENV_PROXY", "no")),
        floating_ip_quota=_quota("FLOATING_IP_QUOTA", given.get("FLOATING_IP_QUOTA", "-1")),
        log_format=_log_format(given.get("LOG_FORMAT", "text")),
        source=source,
    )


def load_one_config(path: Optional[str] = None,
                    env: Optional[Mapping[str, str]] = None) -> OneConfig:
    """Load the driver config from ``path``, $IPFLOATER_ONE_CONF or /etc/one/ipfloater.conf.

    A missing default file means "all defaults"; a missing file that was named
    explicitly (argument or environment) is an error."""
    env = os.environ if env is None else env
    explicit = path or env.get(ENV_PATH)
    target = explicit or DEFAULT_PATH
    try:
        text = Path(target).read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: config file not found") from None
        return parse_one_config_text("", "<defaults>", env)
    except OSError as exc:
        raise ConfigError(f"{target}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{target}: not UTF-8 text") from None
    return parse_one_config_text(text, target, env)
