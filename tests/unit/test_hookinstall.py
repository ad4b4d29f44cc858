"""hookinstall's idea of what oned stores, checked against what a real oned 7.4.0 stored
for our templates (tests/data/opennebula/samples/api-7.4.0-one.hook*.xml), without the
simulator: the installer and the simulator cannot share a mistake."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from one_ipfloater.one.hookinstall import (
    KEPT, TemplateError, parse_hook_template, read_templates, stored_form,
)
from tests.paths import SAMPLES

HOOKS = Path(__file__).resolve().parents[2] / "hooks"


def _real_pool():
    root = ET.parse(SAMPLES / "api-7.4.0-one.hookpool.info.xml").getroot()
    return {h.findtext("NAME"): {c.tag: c.text or "" for c in h.find("TEMPLATE")}
            for h in root}


def test_stored_form_is_what_the_real_oned_stored():
    real = _real_pool()
    templates = {t.name: t for t in read_templates(HOOKS)}
    assert set(real) == set(templates)
    for name, template in templates.items():
        want = stored_form(template)
        have = real[name]
        if name == "ipfloater-detachnic":  # re-written by a replace without REMOTE (the
            have = {**have, "REMOTE": "NO"}  # old installer); allocated hooks all have it
        assert {k: want.get(k) for k in KEPT} == {k: have.get(k) for k in KEPT}, name
        assert "ON" not in want


def test_the_file_itself_differs_from_what_oned_stores():
    """The negative control: comparing the file as written (the old installer) can never
    find a registered state hook unchanged."""
    running = parse_hook_template((HOOKS / "ipfloater-running.hook").read_text())
    real = _real_pool()["ipfloater-running"]
    assert {k: running.attrs.get(k) for k in KEPT} != {k: real.get(k) for k in KEPT}


@pytest.mark.parametrize("text, fragment", [
    ('NAME="ipfloater-x" TYPE="state" RESOURCE="VM" ON="NEVER" COMMAND="c"',
     "ON 'NEVER' is not one of DONE, RUNNING, STOP, UNKNOWN, CUSTOM"),
    ('NAME="ipfloater-x" TYPE="state" RESOURCE="VM" ON="CUSTOM" STATE="POWEROFF" COMMAND="c"',
     'ON "CUSTOM" needs STATE and LCM_STATE'),
])
def test_bad_state_hook_templates_are_refused_with_one_line(text, fragment):
    with pytest.raises(TemplateError) as caught:
        parse_hook_template(text.replace(" ", "\n"), "x.hook")
    assert str(caught.value) == f"x.hook: {fragment}"
