"""The rdma role's files for every rail, rendered by Ansible on localhost and checked by real tools.

The RoCE script and its unit cannot run here (no RDMA NIC, no systemd as
PID 1). Each inventory host reads its RDMA devices from a sysfs tree written
in the kernel's format from GID tables recorded on real ConnectX ports
(tests/rdma_sysfs.py); the role's real ``rdma_rails`` module finds every
rail's netdev there and checks its RoCE v2 IPv4 GID. The files are then
checked with ``bash -n`` and ``systemd-analyze verify`` (with the Ray unit
that requires the RoCE unit).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rdma_sysfs import H100_GIDS, gid_table, with_ipv4, write_hca
from render_cluster import ROOT, SYSTEMD_ANALYZE, env_lines, render, systemd_verify

INVENTORY = ROOT / "inventory" / "example-2node-roce" / "hosts.yml"
TABLE = gid_table(H100_GIDS.read_text())
SPARKS = {"spark-01": 1, "spark-02": 2}


def spark_sysfs(tmp: Path, *, second_half_ipv4: bool = True, netdev_suffix: str = "") -> None:
    """Two DGX Sparks: both halves of the cabled port (port 1, NVIDIA's "Connect Two Sparks"
    example) up and addressed, port 0's halves present and down."""
    for host, n in SPARKS.items():
        root = tmp / "sysfs" / host
        write_hca(root, "rocep1s0f1", ["enp1s0f1np1"], with_ipv4(TABLE, f"192.168.100.{n}"))
        write_hca(root, "roceP2p1s0f1", ["enP2p1s0f1np1" + netdev_suffix],
                  with_ipv4(TABLE, f"192.168.101.{n}" if second_half_ipv4 else None))
        for hca, netdev in (("rocep1s0f0", "enp1s0f0np0"), ("roceP2p1s0f0", "enP2p1s0f0np0")):
            write_hca(root, hca, [netdev], with_ipv4(TABLE, None), state="1: DOWN", phys_state="3: Disabled")


@pytest.fixture
def sparks(example_render):
    """The session's one full render of the example, native runtime (tests/conftest.py): its RoCE
    files are this role's, the same as an rdma-only render writes (test_env_file_is_idempotent)."""
    tmp = example_render("example-2node-roce", "native")
    return tmp, tmp / "out"


def test_nccl_environment_names_both_halves_exactly_and_leaves_the_gid_to_nccl(sparks):
    _, out = sparks
    assert env_lines(out / "spark-01" / "cluster.env") == {
        "VLLM_HOST_IP": "192.168.100.1",
        "GLOO_SOCKET_IFNAME": "enp1s0f1np1",
        "TP_SOCKET_IFNAME": "enp1s0f1np1",
        "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
        "NCCL_IB_HCA": "=rocep1s0f1,roceP2p1s0f1",
        "NCCL_IB_TC": "106",
        "NCCL_IB_SL": "3",
        "NCCL_IB_RETRY_CNT": "7",
        "NCCL_IB_TIMEOUT": "20",
    } | {k: v for k, v in env_lines(out / "spark-01" / "cluster.env").items()
         if k.startswith(("NCCL_DEBUG", "NCCL_NET_GDR", "RAY_"))}


def test_env_file_is_idempotent(sparks):
    tmp, _ = sparks
    proc = render(INVENTORY, tmp, full=False)
    assert proc.returncode == 0
    assert "changed=0" in proc.stdout.split("PLAY RECAP")[1]


def test_roce_script_configures_every_rail(sparks):
    _, out = sparks
    script = (out / "spark-02" / "servekit-rdma-defaults").read_text()
    assert "  'rocep1s0f1 enp1s0f1np1'\n  'roceP2p1s0f1 enP2p1s0f1np1'\n)" in script
    assert "echo 'RoCE v2' > \"$port_dir/default_roce_mode\"" in script
    assert 'echo 106 > "$port_dir/default_roce_tos"' in script
    assert 'ip link set dev "$netdev" mtu 9000' in script
    # the example fabric is two nodes back to back: no PFC (rdma_lossless: false)
    assert "dcb " not in script and "rdma_lossless is false" in script
    assert subprocess.run(["bash", "-n", str(out / "spark-02" / "servekit-rdma-defaults")],
                          check=False).returncode == 0


def test_roce_unit_waits_for_every_rails_netdev_and_orders_before_the_real_units(sparks):
    _, out = sparks
    unit = (out / "spark-01" / "servekit-rdma.service").read_text()
    devices = [f"sys-subsystem-net-devices-{netdev}.device" for netdev in ("enp1s0f1np1", "enP2p1s0f1np1")]
    for device in devices:
        assert f"Wants={device}\nAfter={device}\n" in unit
    # a rail that goes away stops nothing (no BindsTo=); one that comes back runs the
    # script again: its device unit wants this one ([Install]), which goes inactive
    # once the script ran (no RemainAfterExit), so the device's start job runs it
    keys = {line.split("=", 1)[0] for line in unit.splitlines() if "=" in line and not line.startswith("#")}
    assert not {"BindsTo", "Requires", "RemainAfterExit"} & keys
    assert f"WantedBy=multi-user.target {' '.join(devices)}\n" in unit
    assert "Before=network-online.target servekit-ray.service servekit-vllm.service\n" in unit
    before = [w for line in unit.splitlines() if line.startswith("Before=") for w in line[7:].split()]
    assert not {"ray.service", "vllm.service"} & set(before), "units that do not exist"
    assert f"ExecStart={out / 'spark-01' / 'servekit-rdma-defaults'}\n" in unit


def test_lossless_fabric_sets_dscp_trust_and_pfc_with_dcb(tmp_path):
    spark_sysfs(tmp_path)
    proc = render(INVENTORY, tmp_path, "-e", '{"rdma_lossless": true}', full=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    script = (tmp_path / "out" / "spark-01" / "servekit-rdma-defaults").read_text()
    assert 'dcb app replace dev "$netdev" dscp-prio 26:3' in script
    assert 'dcb pfc set dev "$netdev" prio-pfc all:off 3:on' in script
    assert "mlnx_qos" not in script
    assert '  servekit_lossless "$netdev"\n' in script


def test_lossless_skips_an_sriov_vf_and_a_refused_dcb_warns_instead_of_failing_the_unit(tmp_path):
    """Hardware review P2: `dcb` on an SR-IOV VF (no vport_group_manager) failed the
    unit under set -e, and through Requires= Ray never started at boot. The rendered
    script's function runs here with a fake sysfs and a `dcb` that fails as on a VF."""
    spark_sysfs(tmp_path)
    proc = render(INVENTORY, tmp_path, "-e", '{"rdma_lossless": true}', full=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    script = (tmp_path / "out" / "spark-01" / "servekit-rdma-defaults").read_text()
    start = script.index("servekit_lossless() {")
    function = script[start:script.index("\n}\n", start)]
    bin_dir, calls = tmp_path / "stub-bin", tmp_path / "dcb-calls"
    bin_dir.mkdir()
    (bin_dir / "dcb").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n'
                                 '[[ -z $DCB_FAILS ]] || { echo "Operation not supported" >&2; exit 1; }\n')
    (bin_dir / "dcb").chmod(0o755)
    sysfs = tmp_path / "fake-sys"
    (sysfs / "class/net/vf0/device/physfn").mkdir(parents=True)  # a VF's link to its PF
    (sysfs / "class/net/pf0/device").mkdir(parents=True)

    def run(netdev: str, **env: str) -> subprocess.CompletedProcess:
        calls.unlink(missing_ok=True)
        program = f"set -euo pipefail\n{function}\n}}\nservekit_lossless {netdev}"
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SERVEKIT_RDMA_SYSFS": str(sysfs), **env}
        return subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=False,
                              timeout=30, env=env)

    vf = run("vf0")
    assert vf.returncode == 0 and "vf0 is an SR-IOV VF" in vf.stderr and not calls.exists(), vf
    refused = run("pf0", DCB_FAILS="1")
    assert refused.returncode == 0, refused.stderr
    assert "WARNING: dcb could not set DSCP trust and PFC on pf0" in refused.stderr
    ok = run("pf0")
    assert ok.returncode == 0 and ok.stderr == "", ok
    assert calls.read_text().splitlines() == ["app replace dev pf0 dscp-prio 26:3",
                                              "pfc set dev pf0 prio-pfc all:off 3:on"]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_ray_unit_wants_the_roce_unit_and_both_pass_systemd_analyze(sparks, tmp_path):
    _, rendered = sparks
    out = tmp_path / "spark-02"  # a copy: the session's render stays whole for other tests
    out.mkdir()
    for name in ("servekit-ray.service", "servekit-rdma.service"):
        shutil.copy(rendered / "spark-02" / name, out / name)
    ray = (out / "servekit-ray.service").read_text()
    # Wants=, not Requires=: a restart or failure of the RoCE unit leaves Ray running
    # (systemd.unit(5): Requires= stops or restarts this unit with the other one)
    assert "Wants=servekit-rdma.service\nAfter=servekit-rdma.service\n" in ray
    keys = {line.split("=", 1)[0] for line in ray.splitlines() if "=" in line and not line.startswith("#")}
    assert not {"BindsTo", "Requires"} & keys
    check = systemd_verify(out / "servekit-ray.service", out / "servekit-rdma.service")
    assert check.returncode == 0, check.stderr
    # the check bites: a RoCE unit systemd refuses to load fails it
    (out / "servekit-rdma.service").write_text((out / "servekit-rdma.service").read_text()
                                              .replace("\nExecStart=", "\n#ExecStart="))
    check = systemd_verify(out / "servekit-ray.service", out / "servekit-rdma.service")
    assert check.returncode != 0 and "has no ExecStart=" in check.stderr, check.stderr


def test_rail_without_an_ipv4_gid_stops_the_stage_naming_it(tmp_path):
    spark_sysfs(tmp_path, second_half_ipv4=False)
    proc = render(INVENTORY, tmp_path, full=False)
    assert proc.returncode != 0
    assert ("roceP2p1s0f1 port 1: no RoCE v2 GID with an IPv4 address (NCCL >= 2.21 picks one itself); "
            "give enP2p1s0f1np1 an IPv4 address, or pin rdma_nccl_ib_gid_index") in proc.stdout


def test_pinned_gid_index_is_written_and_skips_the_ipv4_gid_check(tmp_path):
    spark_sysfs(tmp_path, second_half_ipv4=False)
    proc = render(INVENTORY, tmp_path, "-e", "rdma_nccl_ib_gid_index=1", full=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert env_lines(tmp_path / "out" / "spark-02" / "cluster.env")["NCCL_IB_GID_INDEX"] == "1"


def test_netdev_that_is_not_the_hcas_stops_the_stage(tmp_path):
    spark_sysfs(tmp_path, netdev_suffix="x")
    proc = render(INVENTORY, tmp_path, full=False)
    assert proc.returncode != 0
    assert ("roceP2p1s0f1: rdma_netdevs names 'enP2p1s0f1np1', but roceP2p1s0f1's netdevs are "
            "enP2p1s0f1np1x") in proc.stdout


def test_netdevs_are_discovered_without_rdma_netdevs(tmp_path):
    spark_sysfs(tmp_path)
    proc = render(INVENTORY, tmp_path, "-e", '{"rdma_netdevs": {}}', full=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    unit = (tmp_path / "out" / "spark-01" / "servekit-rdma.service").read_text()
    assert "Wants=sys-subsystem-net-devices-enP2p1s0f1np1.device" in unit


def test_cluster_without_rdma_disables_nccl_ib(tmp_path):
    proc = render(INVENTORY, tmp_path, "-e", '{"cluster_rdma_enabled": false}', full=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    env = env_lines(tmp_path / "out" / "spark-01" / "cluster.env")
    assert env["NCCL_IB_DISABLE"] == "1"
    assert not any(key.startswith("NCCL_IB_") and key != "NCCL_IB_DISABLE" for key in env)
    assert not (tmp_path / "out" / "spark-01" / "servekit-rdma.service").exists()
