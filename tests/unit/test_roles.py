"""Role contracts: argument_specs match defaults; every shipped inventory parses."""

from __future__ import annotations

import ast
import re

import pytest
import yaml
from helpers import ROOT, ansible_playbook

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
    proc = ansible_playbook("-i", inventory, "--syntax-check", "site.yml", timeout=120)
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


ROLE_NAMES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
# A role-prefixed name on its own (not the tail of a longer name, not an attribute).
INPUT_NAME = re.compile(r"(?<![\w.])(?:" + "|".join(ROLE_NAMES) + r")_[a-z0-9_]*[a-z0-9]")
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
FAIL_MODULES = ("ansible.builtin.fail", "ansible.builtin.assert", "fail", "assert")


def _role_inputs() -> set[str]:
    names: set[str] = set()
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(spec.read_text())["argument_specs"] or {}).values():
            names |= set((entry or {}).get("options") or {})
    return names


def _task_messages(node):
    """fail msg and assert fail_msg texts anywhere in a tasks file, without their Jinja."""
    if isinstance(node, list):
        for item in node:
            yield from _task_messages(item)
    elif isinstance(node, dict):
        for module in FAIL_MODULES:
            args = node.get(module)
            if isinstance(args, dict):
                yield from (JINJA.sub(" ", args[key]) for key in ("msg", "fail_msg")
                            if isinstance(args.get(key), str))
        for value in node.values():
            yield from _task_messages(value)


def _python_messages(path):
    """String parts of what modules raise, fail with or append to their problem lists."""
    for node in ast.walk(ast.parse(path.read_text())):
        func = node.func if isinstance(node, ast.Call) else None
        name = getattr(func, "attr", None) or getattr(func, "id", None) or ""
        if isinstance(node, ast.Raise) or name in ("append", "fail_json", "warn") or name.endswith("Error"):
            yield from (sub.value for sub in ast.walk(node)
                        if isinstance(sub, ast.Constant) and isinstance(sub.value, str))


def test_error_messages_name_variables_that_exist():
    """Every role-prefixed variable a user-facing error names is an input of some role."""
    texts = [(str(f.relative_to(ROOT)), msg) for f in sorted(ROOT.glob("roles/*/tasks/*.yml"))
             for msg in _task_messages(yaml.safe_load(f.read_text()))]
    for path in sorted([*ROOT.glob("library/*.py"), *ROOT.glob("module_utils/*.py"),
                        *ROOT.glob("action_plugins/*.py")]):
        texts += [(str(path.relative_to(ROOT)), msg) for msg in _python_messages(path)]
    named = {(name, where) for where, text in texts for name in INPUT_NAME.findall(text)}
    assert len({n for n, _ in named}) >= 15, "the scan found too few names to be looking at messages"
    unknown = sorted((n, w) for n, w in named if n not in _role_inputs())
    assert not unknown, f"error messages name variables no role's argument_specs defines: {unknown}"
