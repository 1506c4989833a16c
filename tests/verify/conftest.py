"""testinfra suite for a deployed cluster, usable against any inventory.

    pytest tests/verify --hosts='ansible://head:workers' \
        --ansible-inventory=inventory/<cluster>/hosts.yml

Tests that need GPUs or RDMA select themselves from the inventory
(cluster_devices_per_node, cluster_rdma_enabled) and say why when they skip.
"""

from __future__ import annotations

import shlex

import pytest
from servekit.module_utils.node_facts import GPU_QUERY

ROLE_DEFAULTS = {  # roles/cluster/defaults/main.yml, for hosts the inventory leaves them unset
    "cluster_rdma_enabled": True,
    "cluster_rdma_hca": "mlx5_0",
    "cluster_rdma_netdev": "eth0",
    "cluster_devices_per_node": 1,
}


@pytest.fixture
def hostvars(host) -> dict:
    found = host.ansible.get_variables() if host.backend.NAME == "ansible" else {}
    return {key: found.get(key, default) for key, default in ROLE_DEFAULTS.items()} | found


@pytest.fixture
def rdma(hostvars) -> dict:
    if not hostvars["cluster_rdma_enabled"]:
        pytest.skip("inventory sets cluster_rdma_enabled: false (no RDMA NICs on this cluster)")
    return {"hca": hostvars["cluster_rdma_hca"].split(",")[0].split(":")[0],
            "netdev": hostvars["cluster_rdma_netdev"]}


@pytest.fixture
def gpus(host) -> str:
    if not host.exists("nvidia-smi"):
        pytest.skip("no nvidia-smi on this host: not an NVIDIA GPU node")
    return host.check_output(shlex.join(GPU_QUERY))
