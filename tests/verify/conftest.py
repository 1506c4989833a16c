"""testinfra suite for a deployed cluster, usable against any inventory.

    pytest tests/verify --hosts='ansible://head:workers' \
        --ansible-inventory=inventory/<cluster>/hosts.yml

Tests that need GPUs or RDMA select themselves from the inventory
(cluster_devices_per_node, cluster_rdma_enabled) and say why when they skip.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def inventory_vars(request) -> dict[str, dict]:
    """Variables of every head/workers host in the inventory under test, in rank order."""
    from testinfra.utils.ansible_runner import AnsibleRunner

    path = request.config.option.ansible_inventory
    if not path:
        pytest.skip("these checks need --ansible-inventory (the cluster's inventory)")
    runner = AnsibleRunner(path)
    groups = runner.get_variables(runner.get_hosts("all")[0])["groups"]
    names = groups.get("head", []) + groups.get("workers", [])
    return {name: runner.get_variables(name) for name in names}


@pytest.fixture(scope="session")
def cluster(inventory_vars) -> dict[str, dict]:
    return {
        name: {
            "name": name,
            "rank": rank,
            "address": hv.get("cluster_data_address", hv.get("ansible_host", name)),
            "api_port": hv.get("cluster_api_port", 8000),
            "vars": hv,
        }
        for rank, (name, hv) in enumerate(inventory_vars.items())
    }


@pytest.fixture
def node(host, cluster) -> dict:
    name = host.ansible.get_variables()["inventory_hostname"]
    if name not in cluster:
        pytest.skip(f"{name} is in neither 'head' nor 'workers'")
    return cluster[name]


@pytest.fixture
def model(node) -> str:
    hv = node["vars"]
    return os.environ.get("MODEL_NAME") or hv.get("cluster_default_model", "gpt-oss-20b")


@pytest.fixture
def venv(node) -> str:
    return node["vars"].get("runtime_venv", "/opt/servekit/venv")


@pytest.fixture
def api_key(node) -> str | None:
    """The cluster's API key, from the inventory (vault-decrypted by ansible-inventory)."""
    from servekit.cli import resolve_plain_var

    return resolve_plain_var(node["vars"], "vllm_api_key") or None
