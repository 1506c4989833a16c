"""Supported node operating systems (issue 24, item 12), on Ansible's distribution facts.

Facts: recorded on a Debian 12 host, composed for Ubuntu and Rocky in the same `setup` output
format; /etc/dgx-release as posted from a DGX Spark and composed for DGX OS 6
(tests/fixtures/os/README.md says which is which and where the values come from).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from servekit.module_utils.node_preflight import (
    SUPPORTED_OS,
    host_problems,
    node_os,
    parse_dgx_release,
    preflight_report,
)

ROOT = Path(__file__).resolve().parents[2]
OS = ROOT / "tests" / "fixtures" / "os"


def os_facts(name: str, dgx: str | None = None) -> dict:
    facts = json.loads((OS / f"ansible-facts-{name}.json").read_text())["ansible_facts"]
    return {"distribution": facts["ansible_distribution"],
            "distribution_version": facts["ansible_distribution_version"],
            "distribution_major_version": facts["ansible_distribution_major_version"],
            "dgx_release": parse_dgx_release((OS / f"dgx-release-{dgx}.txt").read_text()) if dgx else None}


def test_dgx_release_keeps_the_last_ota_version():
    release = parse_dgx_release((OS / "dgx-release-dgx-os-7-spark.txt").read_text())
    assert release["DGX_SWBUILD_VERSION"] == "7.2.3" and release["DGX_OTA_VERSION"] == "7.3.1"
    assert parse_dgx_release('DGX_NAME=DGX Spark\nDGX_OTA_VERSION="7.3.1"\nDGX_OTA_VERSION="7.4.0"\n') == {
        "DGX_NAME": "DGX Spark", "DGX_OTA_VERSION": "7.4.0"}


@pytest.mark.parametrize(("facts", "name"), [
    (("debian-12",), "Debian 12 (12.11)"),
    (("ubuntu-22.04",), "Ubuntu 22.04"),
    (("ubuntu-24.04",), "Ubuntu 24.04"),
    (("ubuntu-22.04", "dgx-os-6-h100"), "DGX OS 6.2.0 (Ubuntu 22.04)"),
    (("ubuntu-24.04", "dgx-os-7-spark"), "DGX OS 7.3.1 (Ubuntu 24.04)"),
])
def test_supported_systems_pass(facts, name):
    assert node_os(os_facts(*facts)) == (name, True)
    assert host_problems("node-1", {"os": os_facts(*facts)}, {"require_rdma": False}) == []


@pytest.mark.parametrize(("facts", "name"), [
    (("rocky-9.4",), "Rocky 9.4"),
    # DGX OS 7's release file on Ubuntu 22.04 is no DGX OS servekit knows
    (("ubuntu-22.04", "dgx-os-7-spark"), "DGX OS 7.3.1 (Ubuntu 22.04)"),
])
def test_other_systems_are_refused_by_name(facts, name):
    problems = host_problems("node-1", {"os": os_facts(*facts)}, {"require_rdma": False})
    assert problems == [
        f"node-1: the node runs {name}, which servekit does not support; supported: Debian 12, "
        "Ubuntu 22.04, Ubuntu 24.04, DGX OS 6, DGX OS 7 (the roles and their package names are "
        "tested on these only)"]


def test_debian_11_is_refused():
    facts = dict(os_facts("debian-12"), distribution_version="11.9", distribution_major_version="11")
    assert node_os(facts) == ("Debian 11.9", False)


def test_lab_nodes_keep_passing():
    """The lab's nodes are Debian bookworm (servekit/lab/base.py SUITE) with no GPU or RDMA."""
    assert 'SUITE = "bookworm"' in (ROOT / "servekit" / "lab" / "base.py").read_text()
    report = preflight_report({"lab-1": {"os": os_facts("debian-12")}},
                              {"lab-1": {"require_rdma": False}}, 1, require_gpus=False)
    assert report["problems"] == []


def test_preflight_gathers_the_distribution_and_passes_it_with_dgx_release():
    tasks = yaml.safe_load((ROOT / "roles" / "preflight" / "tasks" / "main.yml").read_text())
    setup = tasks[0]["ansible.builtin.setup"]
    assert setup["gather_subset"] == ["!all", "!min", "distribution"]
    check = next(t for t in tasks if "preflight_check" in t)["preflight_check"]["facts"]
    for key in ("distribution", "distribution_version", "distribution_major_version", "dgx_release"):
        assert f"'{key}':" in check
    assert SUPPORTED_OS == ("Debian 12", "Ubuntu 22.04", "Ubuntu 24.04", "DGX OS 6", "DGX OS 7")
