"""`ipfloaterd start|stop`, the original ipfloater's verbs, answer with what to use instead
(one line, exit 2) before any config is read, so they change nothing on any host."""

import subprocess
import sys

import pytest


def ipfloaterd(*args, env_conf="/nonexistent/ipfloaterd.conf"):
    return subprocess.run([sys.executable, "-m", "one_ipfloater.daemon", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"IPFLOATERD_CONF": env_conf, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("verb, instead", [
    ("start", ["`systemctl start ipfloaterd`", "`ipfloaterd run`", "foreground"]),
    ("stop", ["`systemctl stop ipfloaterd`"]),
])
def test_retired_verb_names_the_replacement(verb, instead, tmp_path):
    conf = tmp_path / "ipfloaterd.conf"   # never created: the verb must not need a config
    done = ipfloaterd(verb, "-c", str(conf))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"ipfloaterd: there is no '{verb}' command: ")
    for text in instead:
        assert text in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_retired_verbs_stay_out_of_the_help_listing():
    done = ipfloaterd("--help")
    assert done.returncode == 0
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")
              and line.split()]
    assert {"run", "flush", "check", "token"} <= set(listed)   # the listing was read
    assert "start" not in listed and "stop" not in listed


def test_negative_control_an_unknown_verb_is_still_a_usage_error():
    done = ipfloaterd("restart")
    assert done.returncode == 2
    assert "invalid choice: 'restart'" in done.stderr and "systemctl" not in done.stderr
