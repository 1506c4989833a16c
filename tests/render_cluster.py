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
from rdma_sysfs import H100_GIDS, gid_table, with_ipv4, write_hca

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
                 "cluster_compose_dir": "{{ out }}/compose"},
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
        "-e", f'{{"cluster_compose_command": ["{bin_dir / "docker"}", "compose"]}}',
        "-e", f"cluster_container_engine_bin={bin_dir / 'docker'}",
        *extra, timeout=300)


TABLE = gid_table(H100_GIDS.read_text())


def sparks(root: Path, n: int) -> None:
    """A DGX Spark: both halves of the cabled port (port 1, as in NVIDIA's "Connect Two Sparks"
    example) up and addressed, port 0's halves present and down."""
    write_hca(root, "rocep1s0f1", ["enp1s0f1np1"], with_ipv4(TABLE, f"192.168.100.{n}"))
    write_hca(root, "roceP2p1s0f1", ["enP2p1s0f1np1"], with_ipv4(TABLE, f"192.168.101.{n}"))
    for hca, netdev in (("rocep1s0f0", "enp1s0f0np0"), ("roceP2p1s0f0", "enP2p1s0f0np0")):
        write_hca(root, hca, [netdev], with_ipv4(TABLE, None), state="1: DOWN", phys_state="3: Disabled")


def h100s(root: Path, n: int) -> None:
    """An 8-rail H100 node, with a storage NIC beside the rails: present, not in NCCL_IB_HCA,
    not configured."""
    for rail in range(8):
        write_hca(root, f"mlx5_{rail}", [f"gpu{rail}_eth"], with_ipv4(TABLE, f"10.200.{rail}.{10 + n}"))
    write_hca(root, "mlx5_8", ["ens8f0np0"], with_ipv4(TABLE, None), state="1: DOWN",
              phys_state="3: Disabled")


# Each shipped example inventory: its hosts (host -> n, the last octet of its addresses) and sysfs.
EXAMPLE_SYSFS = {
    "example-2node-roce": ({"spark-01": 1, "spark-02": 2}, sparks),
    "example-2x8-h100": ({"h100-01": 1, "h100-02": 2}, h100s),
}


class ExampleRenders:
    """One full render per (shipped example inventory, runtime) per test session, shared by the
    render tests (tests/conftest.py's ``example_render``). Readers must not change what it wrote:
    copy a file before breaking it."""

    def __init__(self, tmp_path_factory) -> None:
        self._factory = tmp_path_factory
        self._done: dict[tuple[str, str | None], tuple[Path, subprocess.CompletedProcess]] = {}

    def __call__(self, name: str, runtime: str | None = None) -> Path:
        """The render's folder: ``sysfs/<host>`` and ``out/<host>`` (``runtime`` None: the inventory's)."""
        return self.run(name, runtime)[0]

    def run(self, name: str, runtime: str | None = None) -> tuple[Path, subprocess.CompletedProcess]:
        """The render's folder and its ansible-playbook run (the validate play's output included)."""
        key = (name, runtime)
        if key not in self._done:
            tmp = self._factory.mktemp(f"{name}-{runtime or 'inventory'}-runtime")
            hosts, sysfs = EXAMPLE_SYSFS[name]
            for host, n in hosts.items():
                sysfs(tmp / "sysfs" / host, n)
            extra = ("-e", f"cluster_runtime={runtime}") if runtime else ()
            proc = render(ROOT / "inventory" / name / "hosts.yml", tmp, *extra)
            assert proc.returncode == 0, proc.stdout[-4000:]
            self._done[key] = (tmp, proc)
        return self._done[key]


def env_lines(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


def systemd_verify(*units: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` on rendered units (their directory joins the unit search path)."""
    assert SYSTEMD_ANALYZE, "systemd-analyze missing"
    return subprocess.run([SYSTEMD_ANALYZE, "verify", *map(str, units)], capture_output=True, text=True,
                          check=False, timeout=120)
