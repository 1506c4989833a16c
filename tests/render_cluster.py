"""Render every file an inventory leads to, on localhost, through the roles' own tasks and templates.

No node is contacted: ``ansible_connection=local`` for every inventory host,
each host reading its RDMA sysfs from a recorded-format tree under
``<tmp>/sysfs/<host>`` (tests/rdma_sysfs.py), every file written under
``<tmp>/out/<host>/``. What runs for real: the validate play (on
localhost; it publishes the checked registry), the rdma role's
``rdma_rails`` module (rails.yml) and env.yml, the ray role's compose.yml
(the Ray container), the vllm role's plan.yml (the plan and the vLLM unit,
which runs vLLM inside the Ray container under the container runtime); the
RoCE script and unit, the Ray unit, the vLLM watchdog, API proxy and
firewall units from the roles' templates. Unit ExecStart binaries that do not exist here (the Ray
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
        {"ansible.builtin.include_role": {"name": "cluster", "tasks_from": "env_checksum.yml"}},
        _template("rdma", "rdma-defaults.sh.j2", "servekit-rdma-defaults", "0755",
                  when="cluster_rdma_enabled"),
        _template("rdma", "servekit-rdma.service.j2", "servekit-rdma.service", when="cluster_rdma_enabled"),
    ]
    vars_files: list[str] = []
    if full:
        vars_files = [str(ROOT / f"roles/firewall/{kind}/main.yml") for kind in ("defaults", "vars")]
        tasks += [
            # the roles' own tasks: the Ray container, then the vLLM plan and unit from the
            # registry the validate play (first) checked
            {"ansible.builtin.include_role": {"name": "ray", "tasks_from": "compose.yml", "public": True}},
            {"ansible.builtin.include_role": {"name": "vllm", "tasks_from": "plan.yml", "public": True}},
            _template("ray", "servekit-ray.service.j2", "servekit-ray.service"),
            _template("vllm", "servekit-vllm-watchdog.service.j2", "servekit-vllm-watchdog.service",
                      when="__vllm_plan.active"),
            _template("vllm", "servekit-api-proxy.service.j2", "servekit-api-proxy.service",
                      when="inventory_hostname in groups['head']"),
            _template("firewall", "servekit-firewall.service.j2", "servekit-firewall.service"),
        ]
    plays = [{
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
    if full:
        plays = [{"ansible.builtin.import_playbook": str(ROOT / "playbooks" / "validate.yml")}, *plays]
    return write_play(tmp / ("render-full.yml" if full else "render-rdma.yml"), plays)


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
        # the ray role creates the folders it mounts into the Ray container
        "-e", f"cluster_vllm_config_root={tmp}/out/{{{{ inventory_hostname }}}}/vllm-config",
        # the vllm role's plan.yml reads the unit running here (none) and writes the new one
        "-e", f"vllm_unit_dir={tmp}/out/{{{{ inventory_hostname }}}}",
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
