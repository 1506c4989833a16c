"""testinfra suite for a deployed cluster, usable against any inventory.

    pytest tests/verify --hosts='ansible://head:workers' \
        --ansible-inventory=inventory/<cluster>/hosts.yml

Tests that need GPUs or RDMA select themselves from the inventory
(cluster_devices_per_node, cluster_rdma_enabled) and say why when they skip.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from servekit.module_utils.node_gpu import GPU_QUERY

import servekit.lab  # noqa: F401  registers the lab's vault password file (servekit/vault.py), as `servekit` does
from servekit.inventory import ClusterView, role_defaults
from servekit.project import project_root
from servekit.runner import ansible_env

ROOT = project_root()
# What the roles deploy where the inventory leaves a variable unset.
ROLE_DEFAULTS = role_defaults(ROOT)


@pytest.fixture
def hostvars(host) -> dict:
    found = host.ansible.get_variables() if host.backend.NAME == "ansible" else {}
    return ROLE_DEFAULTS | found


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
def cluster_view(request) -> ClusterView:
    """The cluster under test: head, nodes, addresses, API, from its inventory over the role defaults."""
    path = request.config.option.ansible_inventory
    if not path:
        pytest.skip("these checks need --ansible-inventory (the cluster's inventory)")
    inventory = Path(path).resolve()
    return ClusterView.load(inventory, ROOT, env=ansible_env(ROOT, inventory))


def cluster_nodes(view: ClusterView) -> dict[str, dict]:
    """Per node, in rank order: name, rank, data address, API port and every variable rendered."""
    return {
        name: {
            "name": name,
            "rank": rank,
            "address": view.address(name),
            "api_port": view.api_port,
            "vars": view.resolved_vars(name),
        }
        for rank, name in enumerate(view.nodes)
    }


@pytest.fixture(scope="session")
def cluster(cluster_view) -> dict[str, dict]:
    return cluster_nodes(cluster_view)


@pytest.fixture
def node(host, cluster) -> dict:
    name = host.ansible.get_variables()["inventory_hostname"]
    if name not in cluster:
        pytest.skip(f"{name} is in neither 'head' nor 'workers'")
    return cluster[name]


@pytest.fixture
def model(node) -> str:
    return os.environ.get("MODEL_NAME") or node["vars"]["cluster_default_model"]


@pytest.fixture
def venv(node) -> str:
    return node["vars"]["cluster_venv"]


@pytest.fixture
def api_key(cluster_view) -> str | None:
    """The cluster's API key, from the inventory (vault-decrypted by ansible-inventory)."""
    return cluster_view.api_key
