"""Role contracts: argument_specs match defaults; every shipped inventory parses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent for p in ROOT.glob("roles/*/meta/argument_specs.yml"))
ROLES_WITH_DEFAULTS = [r for r in ROLES if (r / "defaults" / "main.yml").exists()]
INVENTORIES = sorted(ROOT.glob("inventory/*/hosts.yml"))


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_argument_specs_match_defaults(role):
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = set(specs["argument_specs"]["main"].get("options") or {})
    defaults_file = role / "defaults" / "main.yml"
    defaults = set(yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else set()
    assert options == defaults, (
        f"{role.name}: argument_specs and defaults differ: only in specs {sorted(options - defaults)}, "
        f"only in defaults {sorted(defaults - options)}"
    )


@pytest.mark.parametrize("role", ROLES_WITH_DEFAULTS, ids=[r.name for r in ROLES_WITH_DEFAULTS])
def test_role_inputs_carry_the_role_prefix(role):
    defaults_file = role / "defaults" / "main.yml"
    prefix = role.name + "_"
    bad = [k for k in yaml.safe_load(defaults_file.read_text()) if not k.startswith(prefix)]
    assert not bad, f"{role.name}: inputs must start with '{prefix}': {bad}"


def test_site_yml_only_imports_stage_playbooks():
    plays = yaml.safe_load((ROOT / "site.yml").read_text())
    assert all(set(play) <= {"name", "ansible.builtin.import_playbook"} for play in plays)
    for play in plays:
        assert (ROOT / play["ansible.builtin.import_playbook"]).is_file()


@pytest.mark.parametrize("inventory", INVENTORIES, ids=[i.parent.name for i in INVENTORIES])
def test_syntax_check_every_inventory(inventory):
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
         "--syntax-check", "site.yml"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_role_readme_documents_every_input(role):
    readme = role / "README.md"
    assert readme.is_file(), f"{role.name}: add README.md with a variables table"
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    text = readme.read_text()
    missing = [name for name in specs["argument_specs"]["main"].get("options") or {}
               if f"`{name}`" not in text]
    assert not missing, f"{role.name}/README.md lacks rows for {missing}"
