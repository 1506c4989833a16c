"""The rdma role's files, rendered by Ansible for the example RoCE inventory.

The RoCE script and its unit cannot run here (no RDMA NIC, no systemd as
PID 1); they are rendered through the role's own templates and checked with
``bash -n``. The environment file is written by the role's real task file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventory" / "example-2node-roce" / "hosts.yml"


def render(tmp_path: Path, host: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    play = [{
        "name": "Render the rdma role's files",
        "hosts": host,
        "gather_facts": False,
        "vars": {"preflight_gid_index": 3, "rdma_env_file": str(out / "cluster.env")},
        "roles": ["cluster"],
        "tasks": [
            {"ansible.builtin.include_role": {"name": "rdma", "tasks_from": "env.yml",
                                              "public": True}},
            {"ansible.builtin.copy": {
                "content": "{{ lookup('ansible.builtin.template', cluster_templates_dir"
                           " + '/' + item + '.j2') }}",
                "dest": f"{out}/{{{{ item }}}}", "mode": "0644"},
             "loop": ["rdma-defaults.sh", "servekit-rdma.service"]},
        ],
    }]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(INVENTORY),
         str(playbook), "-e", "ansible_connection=local",
         "-e", f"ansible_python_interpreter={sys.executable}",
         "-e", f"cluster_templates_dir={ROOT / 'templates'}", *extra],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
    )
    return proc, out


def env_lines(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def spark01(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spark01")
    proc, out = render(tmp, "spark-01")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return tmp, out


def test_nccl_environment_for_the_seed_head(spark01):
    _, out = spark01
    assert env_lines(out / "cluster.env") == {
        "VLLM_HOST_IP": "192.168.100.1",
        "GLOO_SOCKET_IFNAME": "enP2p1s0f0np0",
        "TP_SOCKET_IFNAME": "enP2p1s0f0np0",
        "NCCL_SOCKET_IFNAME": "enP2p1s0f0np0",
        "NCCL_IB_HCA": "roceP2p1s0f0",
        "NCCL_IB_GID_INDEX": "3",
        "NCCL_IB_TC": "106",
        "NCCL_IB_SL": "3",
        "NCCL_IB_RETRY_CNT": "7",
        "NCCL_IB_TIMEOUT": "22",
        "NCCL_NET_GDR_LEVEL": "PHB",
        "NCCL_DEBUG": "WARN",
    }


def test_env_file_is_idempotent(spark01):
    tmp, _ = spark01
    proc, _ = render(tmp, "spark-01")
    assert proc.returncode == 0
    assert "changed=0" in proc.stdout.split("PLAY RECAP")[1]


def test_roce_script_sets_v2_tos_and_pfc_priority_3(spark01):
    _, out = spark01
    script = (out / "rdma-defaults.sh").read_text()
    assert "hca=roceP2p1s0f0\n" in script and "netdev=enP2p1s0f0np0\n" in script
    assert "echo 'RoCE v2' > \"$port_dir/default_roce_mode\"" in script
    assert 'echo 106 > "$port_dir/default_roce_tos"' in script
    assert 'mlnx_qos -i "$netdev" --trust dscp --pfc 0,0,0,1,0,0,0,0' in script
    assert subprocess.run(["bash", "-n", str(out / "rdma-defaults.sh")], check=False).returncode == 0


def test_lossy_fabric_skips_pfc_with_a_warning(tmp_path):
    proc, out = render(tmp_path, "spark-02", "-e", '{"rdma_lossless": false}',
                       "-e", "rdma_nccl_ib_gid_index=1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    script = (out / "rdma-defaults.sh").read_text()
    assert "mlnx_qos" not in script.split("set -euo pipefail")[1].split("echo")[-1]
    assert "rdma_lossless is false" in script
    env = env_lines(out / "cluster.env")
    assert env["VLLM_HOST_IP"] == "192.168.100.2" and env["NCCL_IB_GID_INDEX"] == "1"


def test_cluster_without_rdma_disables_nccl_ib(tmp_path):
    proc, out = render(tmp_path, "spark-01", "-e", '{"cluster_rdma_enabled": false}')
    assert proc.returncode == 0, proc.stdout[-3000:]
    env = env_lines(out / "cluster.env")
    assert env["NCCL_IB_DISABLE"] == "1"
    assert not any(key.startswith("NCCL_IB_") and key != "NCCL_IB_DISABLE" for key in env)
