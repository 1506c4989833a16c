"""GPU, RoCE and GPUDirect checks on real GPU / RDMA hosts."""

from __future__ import annotations

import pytest
from servekit.module_utils.node_gpu import parse_gpu_query
from servekit.module_utils.node_preflight import parse_proc_limits
from servekit.module_utils.node_rdma import parse_sysfs_port, roce_v2_gid_index

# Processes whose environment and limits NCCL depends on.
# (bracketed first letters keep pgrep from matching the shell that runs it)
SERVING_PROCESS_PATTERNS = ("[v]llm serve", "[r]aylet", "[g]cs_server")


def test_gpu_count_matches_inventory(gpus, hostvars):
    found = parse_gpu_query(gpus)
    want = hostvars["cluster_devices_per_node"]
    assert len(found) == want, (
        f"{len(found)} GPU(s) visible, inventory says cluster_devices_per_node={want}: "
        "check `nvidia-smi -L`, the driver, and the inventory")


def test_gpu_model_matches_inventory(gpus, hostvars):
    model = hostvars.get("cluster_gpu_model")
    if not model:
        pytest.skip("inventory sets no cluster_gpu_model to compare with")
    names = {gpu["name"] for gpu in parse_gpu_query(gpus)}
    assert names == {model}, f"GPU model(s) {sorted(names)}, inventory says {model}"


def test_data_netdev_mtu_9000(host, rdma):
    mtu = host.file(f"/sys/class/net/{rdma['netdev']}/mtu")
    assert mtu.exists, f"{rdma['netdev']} does not exist: check cluster_rdma_netdev"
    assert mtu.content_string.strip() == "9000", (
        f"{rdma['netdev']} MTU is {mtu.content_string.strip()}: run --tags network")


def _port(host, hca: str) -> dict:
    base = f"/sys/class/infiniband/{hca}/ports/1"
    assert host.file(base).exists, f"{hca} not present: check cluster_rdma_hca and mlx5_ib"
    files = {name: host.file(f"{base}/{name}").content_string
             for name in ("state", "phys_state", "rate", "link_layer")}
    for index in host.file(f"{base}/gids").listdir():
        files[f"gids/{index}"] = host.file(f"{base}/gids/{index}").content_string
        for attr in ("types", "ndevs"):
            path = host.file(f"{base}/gid_attrs/{attr}/{index}")
            files[f"gid_attrs/{attr}/{index}"] = path.content_string if path.exists else ""
    return parse_sysfs_port(files)


def test_rdma_port_active(host, rdma):
    port = _port(host, rdma["hca"])
    assert port["state"] == "ACTIVE", f"{rdma['hca']} port 1 is {port['state']}: check the link"


def test_roce_v2_gid_on_data_netdev(host, rdma):
    index = roce_v2_gid_index(_port(host, rdma["hca"]), rdma["netdev"])
    assert index is not None, f"no RoCE v2 GID on {rdma['netdev']}: give it an address"


def test_gpudirect_path(host, gpus, rdma):
    peermem = host.file("/sys/module/nvidia_peermem").exists
    dmabuf_capable = tuple(int(p) for p in host.sysctl("kernel.osrelease").split(".")[:2]) >= (5, 12)
    assert peermem or dmabuf_capable, (
        "neither nvidia_peermem loaded nor a DMA-BUF capable kernel: run --tags gpudirect")


def _serving_pids(host) -> list[int]:
    pids = []
    for pattern in SERVING_PROCESS_PATTERNS:
        out = host.run(f"pgrep -f {pattern!r}")
        pids += [int(p) for p in out.stdout.split()]
    return pids


def test_nccl_env_in_running_processes(host, rdma):
    pids = _serving_pids(host)
    if not pids:
        pytest.skip("no Ray or vLLM process runs here yet (the ray/vllm stages come later)")
    for pid in pids:
        environ = host.file(f"/proc/{pid}/environ").content.split(b"\0")
        keys = {item.split(b"=", 1)[0].decode() for item in environ if b"=" in item}
        # NCCL_IB_GID_INDEX is unset unless pinned: NCCL >= 2.21 picks the RoCE v2 GID itself
        missing = {"NCCL_IB_HCA", "NCCL_IB_TC", "NCCL_IB_SL",
                   "NCCL_IB_RETRY_CNT", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP"} - keys
        assert not missing, f"PID {pid} lacks {sorted(missing)}: its unit must load the env file"


def test_memlock_unlimited_in_serving_processes(host, rdma):
    pids = _serving_pids(host)
    if not pids:
        pytest.skip("no Ray or vLLM process runs here yet (the ray/vllm stages come later)")
    for pid in pids:
        limits = parse_proc_limits(host.file(f"/proc/{pid}/limits").content_string)
        entry = limits["Max locked memory"]
        assert entry["soft"] == entry["hard"] == "unlimited", (
            f"PID {pid} locked memory is {entry}: RDMA needs unlimited (LimitMEMLOCK=infinity)")
