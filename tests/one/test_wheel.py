"""The front-end install from a BUILT WHEEL, with no checkout: the extras per side, the hook
templates and the hook script shipped inside the package, ``ipfloater-one install-remotes``
and ``install-hooks`` run from a fresh virtualenv against the oned simulator, and a hook
that onehem (the emulation) runs through the installed script's own shebang.

The fresh virtualenv gets the wheel alone (``--no-deps``); its dependencies come from the
test's own environment through a path file, so the test needs no package index. The
package itself can only come from the wheel: a plain path entry does not run the editable
install's hook, and the checkout is never on the fresh interpreter's path.
"""

import base64
import email.parser
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.hem import HookExecutionManager
from tests.one.fipenv import TOKEN

# one worker builds the wheel once (pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("wheel")

REPO = Path(__file__).resolve().parents[2]
YES = 'NAME="a" NIC=[NETWORK="priv"] FLOATING_IP="YES"'
# A PATH where `/usr/bin/env python3` finds a Python without the package.
BARE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _run(cmd, **kwargs):
    kwargs.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the sources, so the build leaves nothing in the checkout
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "data"))
    shutil.copytree(REPO / "tests" / "data", src / "tests" / "data")
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                 "-q", "-w", out, src])
    assert done.returncode == 0, done.stderr
    [path] = out.glob("one_ipfloater-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh virtualenv with the wheel installed, run from a folder with no checkout."""
    root = tmp_path_factory.mktemp("venv")
    done = _run([sys.executable, "-m", "venv", "--without-pip", root / "v"])
    assert done.returncode == 0, done.stderr
    python = root / "v" / "bin" / "python"
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                 "--no-deps", "--no-index", wheel])
    assert done.returncode == 0, done.stderr
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.strip()
    Path(purelib, "zz-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    where = _run([python, "-c", "import one_ipfloater; print(one_ipfloater.__file__)"],
                 cwd=root)
    assert where.returncode == 0 and where.stdout.startswith(purelib), where
    return root / "v"


def _extras(wheel_path):
    with zipfile.ZipFile(wheel_path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(archive.read(name).decode())
    out = {}
    for requirement in meta.get_all("Requires-Dist"):
        spec, _, marker = requirement.partition(";")
        extra = marker.split("extra ==")[1].strip(" '\"") if "extra ==" in marker else ""
        out.setdefault(extra, set()).add(spec.split(">")[0].split("<")[0].split("=")[0]
                                         .strip().lower())
    return out


def test_extras_per_side(wheel):
    extras = _extras(wheel)
    assert extras[""] == {"requests"}
    assert extras["router"] == {"python-iptables", "waitress", "prometheus-client"}  # no OpenNebula client
    assert extras["frontend"] == {"pyone", "lxml"}  # no netfilter binding
    assert {"python-iptables", "pyone", "lxml", "pytest"} <= extras["test"]


def test_wheel_ships_templates_and_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "hooks").glob("*.hook"):
        assert f"one_ipfloater/one/data/hooks/{path.name}" in names
    assert "one_ipfloater/one/data/remotes/hooks/ipfloater/ipfloater-hook" in names


def test_wheel_ships_no_test_tooling(wheel):
    """The simulator, the hook-manager emulation and the namespace lab live in tests/support:
    a router or a front-end installs the package and nothing of the tests."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"one_ipfloater"}
    assert [n for n in names if "/testing/" in n or n.startswith("tests/")] == []
    assert "one_ipfloater/one/hook.py" in names  # a listing that would see the package


def test_install_remotes_from_the_wheel(venv, tmp_path):
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    cmd = [venv / "bin" / "ipfloater-one", "--json", "install-remotes", "--remotes", remotes]
    done = _run(cmd, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    script = remotes / "hooks" / "ipfloater" / "ipfloater-hook"
    assert json.loads(done.stdout) == {"path": str(script), "python": str(venv / "bin" / "python"),
                                       "action": "created"}
    assert script.read_text().splitlines()[0] == f"#!{venv}/bin/python"
    assert stat.S_IMODE(script.lstat().st_mode) == 0o755 and not script.is_symlink()
    assert json.loads(_run(cmd).stdout)["action"] == "unchanged"
    script.chmod(0o700)
    assert json.loads(_run(cmd).stdout)["action"] == "updated"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    # ONE_LOCATION: a self-contained OpenNebula has its remotes in $ONE_LOCATION/var/remotes
    (tmp_path / "one" / "var" / "remotes").mkdir(parents=True)
    done = _run(cmd[:3], env={**os.environ, "ONE_LOCATION": str(tmp_path / "one")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one" / "var" / "remotes" / "hooks" / "ipfloater" / "ipfloater-hook"
            ).is_file()


def test_install_remotes_refuses_a_symlink_and_a_missing_folder(venv, tmp_path):
    remotes = tmp_path / "remotes"
    (remotes / "hooks").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (remotes / "hooks" / "ipfloater").symlink_to(elsewhere)
    done = _run([venv / "bin" / "ipfloater-one", "install-remotes", "--remotes", remotes])
    assert done.returncode == 1 and list(elsewhere.iterdir()) == []
    assert done.stderr == (f"ipfloater-one: {remotes}/hooks/ipfloater: is a symlink; "
                           "refusing to install through it\n")
    done = _run([venv / "bin" / "ipfloater-one", "install-remotes", "--remotes",
                 tmp_path / "nope"])
    assert done.returncode == 1 and done.stderr.startswith(
        f"ipfloater-one: --remotes {tmp_path / 'nope'}: not a directory")


def _hook_env(env, tmp_path, path):  # noqa: F811
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:adminpw\n")
    conf = tmp_path / "ipfloater.conf"
    conf.write_text(f"[ONE_IPFLOATER]\nIPFLOATER_URL = {env.daemon_url}\n"
                    f"LOCK_DIR = {tmp_path / 'locks'}\n")
    return {"ONE_XMLRPC": env.sim.url, "ONE_AUTH": str(auth), "IPFLOATER_ONE_CONF": str(conf),
            "IPFLOATER_TOKEN": TOKEN, "PATH": path, "HOME": str(tmp_path)}


def test_wheel_registers_hooks_and_its_hook_runs_by_its_shebang(venv, env, tmp_path):  # noqa: F811
    """install-remotes + install-hooks from the wheel, no checkout, then a VM deploy: the
    installed script runs with the wheel's Python although `python3` on PATH lacks it."""
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    hook_env = _hook_env(env, tmp_path, BARE_PATH)
    bin_dir = venv / "bin"
    for args in (["install-remotes", "--remotes", remotes], ["install-hooks"],
                 ["install-hooks"]):
        done = _run([bin_dir / "ipfloater-one", "--json", *args], cwd=tmp_path, env=hook_env)
        assert done.returncode == 0, done.stderr
    actions = {h["action"] for h in json.loads(done.stdout)["hooks"]}
    assert actions == {"unchanged"}  # the second install-hooks
    assert {h.name for h in env.sim.hooks()} == {p.stem for p in (REPO / "hooks").glob("*.hook")}
    hem = HookExecutionManager(env.sim, remotes_dir=str(remotes / "hooks"), env=hook_env,
                               seed=5).start()
    try:
        vm = env.create(YES)
        hem.wait_idle(120)
        runs = hem.executions("ipfloater-running")
        assert len(runs) == 1 and runs[0].success, [(r.exit_code, r.stderr) for r in runs]
        assert env.ut(vm)["FLOATING_IP_STATUS"] == "ACTIVE"
    finally:
        hem.stop()


def test_negative_control_env_python3_shebang_cannot_import_the_package(venv, tmp_path):
    """The script as it is in the repository (`/usr/bin/env python3`) fails where python3
    on PATH is not the package's: what install-remotes' shebang fixes."""
    payload = base64.b64encode(b"<VM><ID>0</ID></VM>")
    done = _run([REPO / "remotes" / "hooks" / "ipfloater" / "ipfloater-hook"],
                input=payload.decode(), env={"PATH": BARE_PATH}, cwd=tmp_path)
    assert done.returncode == 1 and "cannot import one_ipfloater" in done.stderr
