"""GPUDirect RDMA decision (roles/gpudirect/README.md) on recorded and real-format facts.

Fixtures: tests/fixtures/nvidia-h100 (a real H100 host), tests/fixtures/gpudirect
(kallsyms excerpts, the modprobe and kernel messages, GB10's nvidia-smi; see the README
there for which lines are copied from public reports and which are composed in the real
format).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_task
from servekit.module_utils.node_gpu import (
    explain_peermem_failure,
    gpudirect_decision,
    kallsyms_exports,
    parse_gpu_query,
    parse_nvidia_driver_file,
    parse_nvidia_smi_xml,
    unified_memory,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GD = FIXTURES / "gpudirect"
H100 = FIXTURES / "nvidia-h100"


def _probe(index: int) -> str:
    return (H100 / "probe.txt").read_text().split("\n---\n")[index]


def _with_xml(gpus: list[dict], xml: str) -> tuple[list[dict], dict]:
    parsed = parse_nvidia_smi_xml(xml)
    for gpu, detail in zip(gpus, parsed["gpus"], strict=True):
        gpu["addressing_mode"] = detail["addressing_mode"]
    return gpus, parsed


def h100_facts(**over) -> dict:
    """The real H100 host: open kernel module 580.159.04 (probe), kernel set per case."""
    gpus, parsed = _with_xml(parse_gpu_query(_probe(2)), (H100 / "nvidia-smi-q.xml").read_text())
    facts = {"gpus": gpus, "driver_version": parsed["driver_version"],
             "nvidia_kernel_module": parse_nvidia_driver_file(_probe(4))["kernel_module"],
             "kernel": "6.8.0-60-generic", "peer_memory_exporter": None,
             "peermem_available": True, "peermem_loaded": False}
    facts.update(over)
    return facts


def gb10_facts(**over) -> dict:
    gpus, parsed = _with_xml(parse_gpu_query((GD / "query-gpu-gb10.csv").read_text()),
                             (GD / "nvidia-smi-q-gb10.xml").read_text())
    facts = {"gpus": gpus, "driver_version": parsed["driver_version"],
             "nvidia_kernel_module": parse_nvidia_driver_file(
                 (GD / "driver-version-gb10-open.txt").read_text())["kernel_module"],
             "kernel": "6.14.0-1013-nvidia", "peermem_available": True, "peermem_loaded": False,
             "peer_memory_exporter": None}
    facts.update(over)
    return facts


PROPRIETARY = parse_nvidia_driver_file((GD / "driver-version-proprietary.txt").read_text())
OFED = kallsyms_exports((GD / "kallsyms-mlnx-ofed.txt").read_text())
INBOX = kallsyms_exports((GD / "kallsyms-inbox.txt").read_text())


def test_recorded_inputs_parse_as_expected():
    assert parse_nvidia_driver_file(_probe(4)) == {"kernel_module": "open", "version": "580.159.04"}
    assert PROPRIETARY == {"kernel_module": "proprietary", "version": "535.183.01"}
    assert OFED == "ib_core"
    # amdgpu's data symbol pfn_ib_register_peer_memory_client is no export of the API
    assert INBOX is None
    gb10 = gb10_facts()
    assert gb10["gpus"][0]["name"] == "NVIDIA GB10" and gb10["gpus"][0]["memory_total_mib"] is None
    assert gb10["gpus"][0]["addressing_mode"] == "ATS"
    assert h100_facts()["gpus"][0]["addressing_mode"] == "None"


@pytest.mark.parametrize(
    ("facts", "mode", "load", "expect_gdr", "reason"),
    [
        pytest.param({"gpus": []}, "none", False, False, "no NVIDIA GPU", id="no-gpu"),
        # DGX Spark: modinfo finds nvidia_peermem (the old rule picked it; modprobe then
        # answers "Invalid argument"): not supported, nothing loaded, nothing fails.
        pytest.param(gb10_facts(), "unsupported", False, False, "NVIDIA GB10 shares system memory",
                     id="gb10-peermem-shipped"),
        pytest.param(gb10_facts(peer_memory_exporter="ib_core"), "unsupported", False, False,
                     "not supported", id="gb10-even-with-ofed"),
        # the real H100 host: open module 580, kernel 6.8 -> DMA-BUF first, even with OFED
        pytest.param(h100_facts(), "dmabuf", False, True, "open kernel module 580.159.04",
                     id="h100-open-dmabuf"),
        pytest.param(h100_facts(peer_memory_exporter=OFED), "dmabuf", False, True,
                     "recommended", id="h100-open-dmabuf-over-peermem"),
        # proprietary module: no DMA-BUF; peermem only where the API is exported
        pytest.param(h100_facts(nvidia_kernel_module="proprietary", driver_version="535.183.01",
                                peer_memory_exporter=OFED),
                     "peermem", True, True, "ib_core exports ib_register_peer_memory_client",
                     id="proprietary-ofed-peermem"),
        pytest.param(h100_facts(nvidia_kernel_module="proprietary", peer_memory_exporter=OFED,
                                peermem_loaded=True),
                     "peermem", False, True, "nvidia_peermem can load", id="peermem-already-loaded"),
        pytest.param(h100_facts(nvidia_kernel_module="proprietary", peer_memory_exporter=INBOX),
                     "none", False, False, "fails with 'Unknown symbol'", id="proprietary-inbox-stack"),
        pytest.param(h100_facts(kernel="5.4.0-150-generic", peer_memory_exporter=INBOX),
                     "none", False, False, "kernel 5.4.0-150-generic < 5.12", id="old-kernel-inbox"),
        pytest.param(h100_facts(nvidia_kernel_module=None, peermem_available=False),
                     "none", False, False, "no nvidia_peermem", id="unknown-module-no-peermem"),
    ],
)
def test_gpudirect_decision_table(facts, mode, load, expect_gdr, reason):
    decision = gpudirect_decision(facts)
    assert (decision["mode"], decision["load"], decision["expect_gdr"]) == (mode, load, expect_gdr)
    assert reason in decision["reason"]


def test_ats_with_its_own_memory_is_not_unified():
    """GH200/GB200 report Addressing Mode ATS and their HBM: GPUDirect RDMA works there."""
    gh200 = h100_facts()
    gh200["gpus"] = [dict(gh200["gpus"][0], name="NVIDIA GH200 480GB", addressing_mode="ATS",
                          memory_total_mib=97871)]
    assert not unified_memory(gh200)
    assert unified_memory({"gpus": [dict(gh200["gpus"][0], name="NVIDIA X", memory_total_mib=None)]})


def test_explain_peermem_failures():
    einval = (GD / "modprobe-peermem-einval.txt").read_text()
    inbox = explain_peermem_failure(einval, (GD / "dmesg-peermem-inbox.txt").read_text())
    assert inbox.startswith("modprobe: ERROR: could not insert 'nvidia_peermem': Invalid argument; kernel: ")
    assert "nvidia_peermem: Unknown symbol ib_register_peer_memory_client (err -2)" in inbox
    assert "inbox RDMA stack" in inbox
    gb10 = explain_peermem_failure(einval, "[  12.000000] usb 1-1: new device\n")
    assert "built without the peer-memory API" in gb10 and "(GB10)" in gb10


def test_peermem_module_leaves_a_loaded_module_alone(tmp_path):
    (tmp_path / "module" / "nvidia_peermem").mkdir(parents=True)
    rc, out = run_task(tmp_path, {"gpudirect_peermem": {"sysfs_root": str(tmp_path)}})
    assert rc == 0 and out["changed"] is False and out["loaded"] is True


def test_peermem_module_reports_the_load_in_check_mode(tmp_path):
    rc, out = run_task(tmp_path, {"gpudirect_peermem": {"sysfs_root": str(tmp_path)}}, "--check", "--diff")
    assert rc == 0 and out["changed"] is True
    assert out["diff"]["after"] == "nvidia_peermem: loaded\n"
