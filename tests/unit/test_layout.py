"""The shipped package never imports the test tooling: tests/ is not installed on a router
or a front-end, so such an import would fail only there."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imports_of_tests(source: str) -> list:
    """The `tests` modules that `source` imports, at any depth (lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "tests"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "tests":
                found.append(node.module)
    return found


def test_the_package_imports_nothing_from_tests():
    offenders = {str(path.relative_to(REPO)): imports_of_tests(path.read_text())
                 for path in sorted((REPO / "one_ipfloater").rglob("*.py"))}
    assert len(offenders) > 10  # the walk saw the package
    assert {k: v for k, v in offenders.items() if v} == {}


def test_negative_control_the_scan_sees_an_import_of_tests():
    source = ("import os\n"
              "def f():\n"
              "    from tests.support.onesim import OneSimulator\n"
              "    import tests.support.hem\n"
              "from .testing import x\n")
    assert imports_of_tests(source) == ["tests.support.onesim", "tests.support.hem"]


def test_the_package_holds_no_test_tooling():
    assert not (REPO / "one_ipfloater" / "testing").exists()
    assert (REPO / "tests" / "support" / "onesim.py").is_file()
