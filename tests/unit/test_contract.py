"""`cluster` is the contract between stages (roles/cluster/README.md): no play loads another
role's defaults through a no-op import, only the cluster and runtime roles (and the lab) tell
the runtimes apart, and a role reads its own inputs and ``cluster_*``, not another role's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
# A role-prefixed name used as a variable: not the tail of a longer name or an attribute, not
# quoted, not a key (a module option, a dict key, an include_role input).
OTHER_NAME = re.compile(r"(?<![\w.\-/{'\"])(" + "|".join(ROLES) + r")_[a-z0-9_]*[a-z0-9](?![\w'\":])")
# Reads of another role's name that are not a missing owner, each with why.
ALLOWED = {
    ("bench", "vllm_api_key"): "the API key is a vllm secret (vault); bench is a client that sends it",
    ("bench", "vllm_model_source"): "the benchmark's tokenizer is the model folder the vllm stage copies",
    ("bench", "vllm_unit_name"): "the NCCL run's serving check knows the engine as vllm's pause.yml, "
                                 "which bench imports, does",
    ("ray", "vllm_environment"): "ray_environment defaults to vLLM's: the Ray workers run vLLM's ranks",
    ("rdma", "preflight_unified_memory"): "a fact the preflight stage publishes (rdma runs preflight first)",
    ("monitoring", "vllm_router_worker_health"): "a Prometheus metric name in an alert rule, not a variable",
}
# Ansible reads these; Python and shell files under a role do not see its variables.
ANSIBLE_SUFFIXES = {".yml", ".yaml", ".j2"}


def _tracked(*paths: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).is_file()]


def _imports_of(node, found: list) -> None:
    if isinstance(node, dict):
        for key in ("ansible.builtin.import_role", "ansible.builtin.include_role", "import_role",
                    "include_role"):
            if isinstance(node.get(key), dict):
                found.append(node[key])
        for value in node.values():
            _imports_of(value, found)
    elif isinstance(node, list):
        for item in node:
            _imports_of(item, found)


def test_no_play_imports_a_roles_settings():
    bad = []
    for path in _tracked("site.yml", "playbooks", "roles", "benchmarks", "tests"):
        if path.suffix in {".yml", ".yaml"} and "fixtures" not in path.parts:
            found: list = []
            _imports_of(yaml.safe_load(path.read_text()), found)
            bad += [f"{path.relative_to(ROOT)}: {i}" for i in found
                    if str(i.get("tasks_from", "")).startswith("settings")]
    assert not bad, (f"{bad}: a role's defaults that another stage needs belong in "
                     "roles/cluster/defaults/main.yml (cluster_*), not behind a no-op import")


def test_no_settings_task_files_are_left():
    left = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "roles").glob("*/tasks/settings.yml"))
    assert not left, f"{left}: no-op entry points for another stage; publish the value through cluster"


def _runtime_tests(path: Path) -> list[str]:
    test = re.compile(r"cluster_runtime\s*(==|!=)")
    return [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text(errors="ignore")
                                                                      .splitlines(), 1) if test.search(line)]


def test_only_cluster_and_runtime_tell_the_runtimes_apart():
    owners = ("roles/cluster/", "roles/runtime/", "lab/", "inventory/lab/", "tests/lab/", "tests/unit/")
    found = [hit for path in _tracked("roles", "playbooks", "site.yml", "library", "module_utils",
                                      "action_plugins", "servekit", "tests", "benchmarks", ".ci")
             if not str(path.relative_to(ROOT)).startswith(owners)
             for hit in _runtime_tests(path)]
    assert not found, (f"cluster_runtime tested at {found}: read the derived facts in "
                       "roles/cluster/defaults/main.yml (cluster_exec_prefix, cluster_python, "
                       "cluster_containerized, ...) instead")


@pytest.mark.parametrize("role", ROLES)
def test_role_reads_only_its_own_and_cluster_names(role):
    found: dict[str, set[str]] = {}
    for path in (ROOT / "roles" / role).rglob("*"):
        if path.suffix not in ANSIBLE_SUFFIXES or "meta" in path.parts:
            continue  # meta/input_rules.yml relations span roles: the validate stage loads them all
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            for m in OTHER_NAME.finditer(line):
                if m.group(1) not in (role, "cluster") and (role, m.group(0)) not in ALLOWED:
                    found.setdefault(m.group(0), set()).add(str(path.relative_to(ROOT)))
    assert not found, (f"roles/{role} reads another role's inputs {found}: move what more than one "
                       "role reads to roles/cluster/defaults/main.yml as cluster_*, or list the read "
                       "in ALLOWED with the reason")
