"""The container runtime's compose projects for the example RoCE inventory.

No Docker engine runs here, so the projects are rendered by Ansible from the
shared template with the ray and vllm roles' own variables, then checked by a
real Compose implementation (`docker-compose config`, Debian's package; the
Compose-spec schema and its interpolation), and for the settings RDMA
serving needs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play

INVENTORY = ROOT / "inventory" / "example-2node-roce" / "hosts.yml"
COMPOSE = shutil.which("docker-compose")
COMPOSE_TEMPLATE = str(ROOT / "roles/runtime/templates/compose.yaml.j2")
# What roles/ray/tasks/main.yml hands the template for Ray's project.
RAY_ENV = "{{ {'RAY_USAGE_STATS_ENABLED': '0'} | combine(cluster_ray_auth_env) }}"
RAY_VOLUMES = ("{{ [cluster_ray_auth_token_file ~ ':' ~ cluster_ray_auth_token_file ~ ':ro']"
               " if cluster_ray_auth else [] }}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("compose")
    out = tmp / "out"
    play = [{
        "name": "Render the container runtime's compose projects",
        "hosts": "head:workers",
        "gather_facts": False,
        "vars_files": [str(ROOT / "roles/ray/defaults/main.yml"), str(ROOT / "roles/vllm/defaults/main.yml"),
                       str(ROOT / "roles/ray/vars/main.yml"), str(ROOT / "roles/vllm/vars/main.yml")],
        "vars": {"runtime_compose_dir": str(out / "{{ inventory_hostname }}"), "preflight_gid_index": 3,
                 "cluster_env_file": str(out / "{{ inventory_hostname }}/cluster.env")},
        "pre_tasks": [{"ansible.builtin.import_role": {"name": "runtime", "tasks_from": "settings.yml"}}],
        "roles": ["cluster"],
        "tasks": [
            {"ansible.builtin.file": {"path": "{{ runtime_compose_dir }}", "state": "directory",
                                      "mode": "0755"}},
            {"ansible.builtin.include_role": {"name": "rdma", "tasks_from": "env.yml", "public": True}},
            {"name": "Plan the vLLM launch", "vllm_launch": {
                "registry_path": str(ROOT / "config/model_registry.yml"), "model": "gpt-oss-20b",
                "node_rank": "{{ cluster_nodes.index(inventory_hostname) }}",
                "nnodes": 2, "head_address": "{{ cluster_head_address }}",
                "host_address": "{{ cluster_data_address }}", "executor": "ray", "runtime": "container",
                "command": ["vllm"], "exec_start": "{{ __vllm_exec_start }}"},
             "register": "plan"},
            {"name": "Project dirs", "ansible.builtin.file": {
                "path": "{{ item | dirname }}", "state": "directory", "mode": "0755"},
             "loop": ["{{ __ray_compose_file }}", "{{ __vllm_compose_file }}"]},
            {"name": "Ray project", "ansible.builtin.template": {
                "src": COMPOSE_TEMPLATE, "dest": "{{ __ray_compose_file }}",
                "mode": "0644"},
             "vars": {"__compose": {"project": "servekit-ray", "service": "ray",
                                    "argv": "{{ ['ray'] + __ray_args }}",
                                    "env_files": ["{{ cluster_env_file }}"],
                                    "environment": RAY_ENV, "volumes": RAY_VOLUMES}}},
            {"name": "vLLM project", "ansible.builtin.template": {
                "src": COMPOSE_TEMPLATE, "dest": "{{ __vllm_compose_file }}",
                "mode": "0644"},
             "vars": {"__compose": {"project": "servekit-vllm", "service": "vllm", "argv": "{{ plan.argv }}",
                                    "environment": "{{ plan.env }}",
                                    "env_files": ["{{ cluster_env_file }}"]}},
             "when": "plan.active"},
            {"name": "vLLM unit", "ansible.builtin.copy": {
                "content": "{{ plan.unit }}", "dest": "{{ runtime_compose_dir }}/servekit-vllm.service",
                "mode": "0644"},
             "when": "plan.active"},
        ],
    }]
    proc = ansible_playbook(
        "-i", INVENTORY, write_play(tmp / "render.yml", play),
        "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", "cluster_runtime=container")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


def _files(out: Path) -> list[Path]:
    files = sorted(out.glob("*/*/compose.yaml"))
    assert [f.relative_to(out).as_posix() for f in files] == [
        "spark-01/servekit-ray/compose.yaml", "spark-01/servekit-vllm/compose.yaml",
        "spark-02/servekit-ray/compose.yaml",
    ], "the ray executor runs vLLM on the head only; Ray everywhere"
    return files


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (apt-get install docker-compose)")
def test_compose_projects_pass_a_real_compose_checker(rendered):
    for path in _files(rendered):
        proc = subprocess.run([COMPOSE, "-f", str(path), "config", "--quiet"],
                              capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def test_compose_projects_carry_what_rdma_serving_needs(rendered):
    for path in _files(rendered):
        service = next(iter(yaml.safe_load(path.read_text())["services"].values()))
        assert service["network_mode"] == "host" and service["ipc"] == "host", path
        assert "IPC_LOCK" in service["cap_add"], path
        assert service["ulimits"]["memlock"] == {"soft": -1, "hard": -1}, path
        assert service["devices"] == ["/dev/infiniband:/dev/infiniband"], path
        gpus = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpus["driver"] == "nvidia" and gpus["capabilities"] == ["gpu"], path
        assert service["env_file"] == [str(path.parents[1] / "cluster.env")], path
        assert service["image"] == "vllm/vllm-openai:v0.32.0"
        assert service["shm_size"] == "16g"


def test_vllm_container_runs_the_registry_argv_and_ray_joins_the_head(rendered):
    vllm = yaml.safe_load((rendered / "spark-01/servekit-vllm/compose.yaml").read_text())["services"]["vllm"]
    assert vllm["entrypoint"] == ["vllm"]
    assert vllm["command"][:2] == ["serve", "openai/gpt-oss-20b"]
    assert "--distributed-executor-backend" in vllm["command"]
    assert vllm["environment"]["VLLM_HOST_IP"] == "192.168.100.1"
    worker = yaml.safe_load((rendered / "spark-02/servekit-ray/compose.yaml").read_text())["services"]["ray"]
    assert worker["entrypoint"] == ["ray"]
    assert "--address=192.168.100.1:6379" in worker["command"]
    assert "--node-ip-address=192.168.100.2" in worker["command"]
    assert "--node-manager-port=6380" in worker["command"] and "--min-worker-port=20000" in worker["command"]
    assert worker["environment"]["RAY_AUTH_MODE"] == "token"
    assert worker["volumes"][-1] == "/etc/servekit/ray-auth-token:/etc/servekit/ray-auth-token:ro"
    unit = (rendered / "spark-01/servekit-vllm.service").read_text()
    assert "ExecStart=/usr/bin/docker compose -p servekit-vllm -f " in unit
    assert "servekit-vllm/compose.yaml up --abort-on-container-exit" in unit
