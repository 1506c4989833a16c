"""Render every file an inventory leads to, on localhost, through the roles' own tasks and templates.

No node is contacted: ``ansible_connection=local`` for every inventory host,
each host reading its RDMA sysfs from a recorded-format tree under
``<tmp>/sysfs/<host>`` (tests/rdma_sysfs.py), every file written under
``<tmp>/out/<host>/``. What runs for real: the rdma role's ``rdma_rails``
module (rails.yml) and env.yml, the validate stage's ``vllm_launch`` plan,
the RoCE script and unit, the Ray unit and compose project, the vLLM unit
(which runs vLLM inside the Ray container), the vLLM watchdog, API proxy and
firewall units. Unit ExecStart binaries that do not exist here (the Ray
venv, docker) point at stubs under ``<tmp>/bin`` so ``systemd-analyze
verify`` can load the units; nothing runs them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, ansible_playbook, write_play

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# The runtime role's template the ray and vllm roles render their compose projects from.
COMPOSE_TEMPLATE = str(ROOT / "roles/runtime/templates/compose.yaml.j2")
COMPOSE = shutil.which("docker-compose")

def _template(role: str, src: str, dest: str, mode: str = "0644", **extra) -> dict:
    return {"name": f"Render {dest}", "ansible.builtin.template": {
        "src": str(ROOT / "roles" / role / "templates" / src), "dest": f"{{{{ out }}}}/{dest}", "mode": mode},
        **extra}


def _stubs(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    (tmp / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for stub in (bin_dir / "docker", tmp / "venv" / "bin" / "ray"):
        stub.write_text("#!/bin/sh\n# stand-in so systemd-analyze verify finds an executable\nexit 1\n")
        stub.chmod(0o755)
    return bin_dir


def playbook(tmp: Path, *, full: bool = True) -> Path:
    """The render play: rdma files always; with ``full``, Ray and vLLM files too."""
    tasks: list[dict] = [
        {"name": "Per-host output directory",
         "ansible.builtin.file": {"path": "{{ out }}", "state": "directory", "mode": "0755"}},
        {"ansible.builtin.include_role": {"name": "rdma", "tasks_from": "rails.yml", "public": True},
         "when": "cluster_rdma_enabled"},
        {"ansible.builtin.include_role": {"name": "rdma", "tasks_from": "env.yml", "public": True}},
        _template("rdma", "rdma-defaults.sh.j2", "servekit-rdma-defaults", "0755",
                  when="cluster_rdma_enabled"),
        _template("rdma", "servekit-rdma.service.j2", "servekit-rdma.service", when="cluster_rdma_enabled"),
    ]
    vars_files: list[str] = []
    if full:
        vars_files = [str(ROOT / f"roles/{role}/{kind}/main.yml")
                      for kind in ("defaults", "vars") for role in ("ray", "vllm", "firewall")]
        # the plan, then the unit from the same arguments (as roles/vllm/tasks/plan.yml does)
        launch = {
            "registry_path": str(ROOT / "config/model_registry.yml"), "model": "{{ cluster_model }}",
            "node_rank": "{{ cluster_nodes.index(inventory_hostname) }}",
            "nnodes": "{{ cluster_nodes | length }}",
            "devices_per_node": "{{ cluster_devices_per_node }}",
            "head_address": "{{ cluster_head_address }}",
            "host_address": "{{ cluster_data_address }}", "executor": "{{ cluster_executor }}",
            "runtime": "{{ cluster_runtime }}", "command": "{{ vllm_command }}",
            "environment_files": ["{{ cluster_env_file }}"],
            "after": "{{ ['servekit-ray.service'] if cluster_executor == 'ray' else [] }}"}
        tasks += [
            {"name": "Plan the vLLM launch", "vllm_launch": launch, "register": "__vllm_plan"},
            {"name": "The vLLM unit (the container runtime's exec needs the plan)", "vllm_launch": {
                **launch,
                "exec_start": "{{ __vllm_exec_start if cluster_runtime == 'container' else omit }}",
                "exec_stop": "{{ __vllm_exec_stop if cluster_runtime == 'container' else omit }}"},
             "register": "vllm_unit"},
            _template("ray", "servekit-ray.service.j2", "servekit-ray.service"),
            {"name": "Compose project dirs", "ansible.builtin.file": {
                "path": "{{ item | dirname }}", "state": "directory", "mode": "0755"},
             "loop": ["{{ __ray_compose_file }}"],
             "when": "cluster_runtime == 'container'"},
            {"name": "Ray compose project", "ansible.builtin.template": {
                "src": COMPOSE_TEMPLATE, "dest": "{{ __ray_compose_file }}",
                "mode": "0644"},
             "vars": {"__compose": "{{ __ray_compose }}"},
             "when": "cluster_runtime == 'container'"},
            {"name": "vLLM unit", "ansible.builtin.copy": {
                "content": "{{ vllm_unit.unit }}", "dest": "{{ out }}/servekit-vllm.service",
                "mode": "0644"},
             "when": "__vllm_plan.active"},
            _template("vllm", "servekit-vllm-watchdog.service.j2", "servekit-vllm-watchdog.service",
                      when="__vllm_plan.active"),
            _template("vllm", "servekit-api-proxy.service.j2", "servekit-api-proxy.service",
                      when="inventory_hostname in groups['head']"),
            _template("firewall", "servekit-firewall.service.j2", "servekit-firewall.service"),
        ]
    play = [{
        "name": "Render every file of the inventory on localhost",
        "hosts": "head:workers",
        "gather_facts": False,
        "vars_files": vars_files,
        "vars": {"out": str(tmp / "out" / "{{ inventory_hostname }}"),
                 "cluster_env_file": "{{ out }}/cluster.env",
                 "runtime_compose_dir": "{{ out }}/compose"},
        "pre_tasks": [{"ansible.builtin.import_role": {"name": "runtime", "tasks_from": "settings.yml"}}]
        if full else [],
        "roles": ["cluster"],
        "tasks": tasks,
    }]
    return write_play(tmp / ("render-full.yml" if full else "render-rdma.yml"), play)


def render(inventory: Path, tmp: Path, *extra: str, full: bool = True) -> subprocess.CompletedProcess:
    bin_dir = _stubs(tmp)
    return ansible_playbook(
        "-i", inventory, playbook(tmp, full=full),
        "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}",
        # role vars (vars/main.yml) outrank play vars: the recorded sysfs and
        # the script path come in as extra vars
        "-e", f"__rdma_sysfs_root={tmp}/sysfs/{{{{ inventory_hostname }}}}",
        "-e", f"__rdma_script={tmp}/out/{{{{ inventory_hostname }}}}/servekit-rdma-defaults",
        "-e", f"cluster_venv={tmp / 'venv'}",
        "-e", f'{{"runtime_compose_command": ["{bin_dir / "docker"}", "compose"]}}',
        "-e", f"runtime_container_engine_bin={bin_dir / 'docker'}",
        *extra, timeout=300)


def env_lines(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


def systemd_verify(*units: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` on rendered units (their directory joins the unit search path)."""
    assert SYSTEMD_ANALYZE, "systemd-analyze missing"
    return subprocess.run([SYSTEMD_ANALYZE, "verify", *map(str, units)], capture_output=True, text=True,
                          check=False, timeout=120)
