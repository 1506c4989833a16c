"""The GPU/RDMA testinfra checks select themselves from the inventory.

Runs tests/verify against this machine (no GPU, no RDMA NIC) through
testinfra's Ansible backend, as a user runs it against a cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_verify(tmp_path: Path, rdma_enabled: bool) -> subprocess.CompletedProcess:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    head:\n      hosts:\n        node0:\n"
        "          ansible_connection: local\n"
        f"          ansible_python_interpreter: {sys.executable}\n"
        f"          cluster_rdma_enabled: {str(rdma_enabled).lower()}\n"
        "          cluster_rdma_hca: mlx5_9\n          cluster_rdma_netdev: lo\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q",
         "tests/verify/test_gpu_rdma.py", "--hosts=ansible://head",
         f"--ansible-inventory={inventory}"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        # testinfra calls ansible-inventory from PATH: use this environment's.
        env=dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", "")])),
    )


def test_cluster_without_rdma_or_gpus_skips_with_reasons(tmp_path):
    proc = run_verify(tmp_path, rdma_enabled=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "inventory sets cluster_rdma_enabled: false" in proc.stdout
    assert "no nvidia-smi on this host" in proc.stdout
    assert " passed" not in proc.stdout.splitlines()[-1]


def test_missing_rdma_device_fails_naming_it(tmp_path):
    proc = run_verify(tmp_path, rdma_enabled=True)
    assert proc.returncode == 1
    assert "mlx5_9 not present: check cluster_rdma_hca" in proc.stdout
    assert "lo MTU is 65536: run --tags network" in proc.stdout
