"""NCCL / Ray settings that must match their sources, checked on the rendered cluster env file.

The env file is rendered by Ansible from templates/cluster.env.j2 with the rdma, cluster and
preflight role defaults, as the rdma stage writes it. Sources: NCCL env docs
(docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html: NCCL_IB_TIMEOUT default 20 since
2.23, NCCL_NET_GDR_LEVEL "if this isn't specified, NCCL will attempt to optimally select a
value", legacy integers > 4 are SYS), NVIDIA's DGX Spark vLLM recipe
(dgx-spark-playbooks nvidia/vllm/README.md: RAY_memory_monitor_refresh_ms=0) and the CUDA 13.0
release notes (driver >= 580.65.06).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play
from servekit.module_utils.node_preflight import host_problems


def render_env(tmp_path: Path, **extra) -> dict[str, str]:
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars_files": [str(ROOT / "roles/cluster/defaults/main.yml"),
                       str(ROOT / "roles/rdma/defaults/main.yml")],
        "vars": {"preflight_gid_index": 3, "cluster_rdma_hca": "roceP2p1s0f0",
                 "cluster_rdma_netdev": "enP2p1s0f0np0", "cluster_data_address": "192.168.100.1",
                 **extra},
        "tasks": [{"ansible.builtin.copy": {
            "content": "{{ lookup('ansible.builtin.template', '"
                       + str(ROOT / "roles/rdma/templates/cluster.env.j2") + "') }}",
            "dest": str(tmp_path / "cluster.env"), "mode": "0644"}}],
    }]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), "-e", json.dumps(extra), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return dict(line.split("=", 1) for line in (tmp_path / "cluster.env").read_text().splitlines()
                if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def default_env(tmp_path_factory) -> dict[str, str]:
    return render_env(tmp_path_factory.mktemp("default"))


def test_gdr_level_is_left_to_nccl_by_default(default_env):
    assert "NCCL_NET_GDR_LEVEL" not in default_env


def test_gdr_level_is_written_when_set(tmp_path):
    assert render_env(tmp_path, rdma_nccl_net_gdr_level="SYS")["NCCL_NET_GDR_LEVEL"] == "SYS"


def test_ib_timeout_is_nccls_default(default_env):
    assert default_env["NCCL_IB_TIMEOUT"] == "20"


def test_ranks_print_their_channel_transport(default_env):
    """The vLLM transport check reads `NCCL INFO Channel .. via ..`: INFO for INIT and NET."""
    assert default_env["NCCL_DEBUG"] == "INFO"
    assert default_env["NCCL_DEBUG_SUBSYS"] == "INIT,NET"


def test_ray_memory_monitor_off_only_on_unified_memory(default_env, tmp_path):
    assert "RAY_memory_monitor_refresh_ms" not in default_env
    assert render_env(tmp_path, preflight_unified_memory=True)["RAY_memory_monitor_refresh_ms"] == "0"


@pytest.mark.parametrize(("driver", "passes"), [
    ("570.172.08", False),  # CUDA 12.8's branch: too old for CUDA 13 builds
    ("575.57.08", False),
    ("580.65.06", True),    # CUDA 13.0 GA's floor
    ("580.95.05", True),    # DGX Spark (GB10) as shipped
    ("580.159.04", True),   # the recorded H100 host
])
def test_driver_floor_is_cuda_13s(driver, passes):
    floor = yaml.safe_load((ROOT / "roles/preflight/defaults/main.yml").read_text())
    facts = {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}], "driver_version": driver}
    want = {"min_driver": floor["preflight_min_driver_version"], "gpus_per_node": 1,
            "require_rdma": False}
    problems = host_problems("gpu-01", facts, want)
    assert (problems == []) is passes, problems
    if not passes:
        assert f"NVIDIA driver {driver} is older than required 580.65.06" in problems[0]
