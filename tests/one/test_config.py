"""/etc/one/ipfloater.conf: defaults, resolution order, and one-line errors."""

from pathlib import Path

import pytest

from one_ipfloater.one import config
from one_ipfloater.one.config import (DEFAULT_LOCK_DIR, DEFAULT_TOKEN_FILE, SYSTEM_ONE_AUTH,
                                      ConfigError, OneConfig, load_one_config,
                                      parse_one_config_text)

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "ipfloater.conf"


def test_shipped_example_is_all_defaults():
    assert parse_one_config_text(SHIPPED.read_text(), "x", env={"HOME": "/nonexistent"}) == \
        OneConfig(source="x")


def test_defaults_and_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    cfg = load_one_config(env={"HOME": str(tmp_path)})  # a missing default file: defaults
    assert (cfg.one_xmlrpc, cfg.one_auth, cfg.ipfloater_url, cfg.ipfloater_token_file,
            cfg.one_timeout, cfg.ipfloater_timeout, cfg.lock_dir) == (
        "http://localhost:2633/RPC2", SYSTEM_ONE_AUTH, "http://127.0.0.1:7003",
        DEFAULT_TOKEN_FILE, 10.0, 10.0, DEFAULT_LOCK_DIR)
    (tmp_path / ".one").mkdir()
    (tmp_path / ".one" / "one_auth").write_text("u:p\n")
    cfg = load_one_config(env={"HOME": str(tmp_path), "ONE_XMLRPC": "http://fe:2633/RPC2"})
    assert cfg.one_auth == str(tmp_path / ".one" / "one_auth") and cfg.session() == "u:p"
    assert cfg.one_xmlrpc == "http://fe:2633/RPC2"
    cfg = load_one_config(env={"HOME": str(tmp_path), "ONE_AUTH": "/x/auth"})
    assert cfg.one_auth == "/x/auth"


def test_file_wins_over_environment_except_the_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    conf = tmp_path / "c.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nONE_XMLRPC = https://one:2633/RPC2\n"
                    f"ONE_AUTH = {tmp_path}/auth\nIPFLOATER_TOKEN_FILE = {token_file}\n"
                    "one_timeout = 2.5\n")
    env = {"IPFLOATER_ONE_CONF": str(conf), "ONE_XMLRPC": "http://other/RPC2",
           "ONE_AUTH": "/other"}
    cfg = load_one_config(env=env)
    assert cfg.one_xmlrpc == "https://one:2633/RPC2" and cfg.one_auth == f"{tmp_path}/auth"
    assert cfg.one_timeout == 2.5 and cfg.source == str(conf)
    assert cfg.token(env={}) == "from-file"
    assert cfg.token(env={"IPFLOATER_TOKEN": "from-env"}) == "from-env"


@pytest.mark.parametrize("body, message", [
    ("ONE_TIMEOUT = soon", "ONE_TIMEOUT: 'soon' is not a number of seconds"),
    ("IPFLOATER_TIMEOUT = 0", "IPFLOATER_TIMEOUT: '0' must be between 0.1 and 600 seconds"),
    ("IPFLOATER_URL = ftp://router", "IPFLOATER_URL: 'ftp://router' is not an http:// or "
                                     "https:// URL"),
    ("ONE_XMLRPC = http://one:99999/RPC2", "ONE_XMLRPC: 'http://one:99999/RPC2' has an "
                                           "invalid port"),
    ("LOCK_DIR = locks", "LOCK_DIR: 'locks' must be an absolute path"),
    ("ONE_AUTH = one_auth", "ONE_AUTH: 'one_auth' must be an absolute path"),
    ("TOKEN = x", "TOKEN: unknown key"),
])
def test_bad_values_are_one_line_errors_naming_key_and_value(body, message):
    with pytest.raises(ConfigError) as exc:
        parse_one_config_text(f"[ONE_IPFLOATER]\n{body}\n", "f.conf", env={})
    assert str(exc.value).startswith(f"f.conf: {message}") and "\n" not in str(exc.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing section"):
        parse_one_config_text("[IPFLOATER]\nIP_POOL = 1.2.3.4\n", "f.conf", env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_one_config(str(tmp_path / "missing.conf"), env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_one_config(env={"IPFLOATER_ONE_CONF": str(tmp_path / "missing.conf")})


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"), ("", "expected one line 'user:password'"),
    ("oneadmin\n", "expected one line"), (":pw\n", "expected one line"),
])
def test_credentials_are_checked_when_read(tmp_path, content, message):
    path = tmp_path / "one_auth"
    if content is not None:
        path.write_text(content)
    cfg = OneConfig(one_auth=str(path), ipfloater_token_file=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=message):
        cfg.session()
    with pytest.raises(ConfigError, match="IPFLOATER_TOKEN_FILE: token file"):
        cfg.token(env={})
