"""Every systemd unit the roles write, rendered by their own templates and checked by systemd-analyze.

The rdma, ray, vllm (launch, readiness watchdog, API proxy) and firewall
units of inventory/example-2node-roce, native runtime, rendered on localhost
by tests/render_cluster.py (each host's RDMA sysfs from recorded GID
tables). ``systemd-analyze verify`` loads each host's units together (their
Requires=/After= name each other). Binaries that live only on a node
(nginx, the venv's vLLM launcher) are absent here: only systemd's "Command
... is not executable: No such file or directory" lines for those are
ignored; any other complaint fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from render_cluster import EXAMPLE_SYSFS, SYSTEMD_ANALYZE, systemd_verify

HOSTS = EXAMPLE_SYSFS["example-2node-roce"][0]
UNITS = {
    "spark-01": {"servekit-rdma.service", "servekit-ray.service", "servekit-vllm.service",
                 "servekit-vllm-watchdog.service", "servekit-api-proxy.service", "servekit-firewall.service"},
    # the ray executor runs vLLM on the head only; Ray and the firewall everywhere
    "spark-02": {"servekit-rdma.service", "servekit-ray.service", "servekit-firewall.service"},
}
# What systemd says of an ExecStart= binary that is not installed on this machine.
NOT_INSTALLED = re.compile(r"^\S+\.service: Command (/\S+) is not executable: No such file or directory$")
NODE_ONLY = {"/usr/sbin/nginx", "/usr/sbin/nft", "/opt/servekit/bin/vllm", "/usr/bin/python3"}


def complaints(stderr: str) -> tuple[list[str], set[str]]:
    """systemd-analyze's lines other than missing node-only binaries, and the binaries it missed."""
    other, missing = [], set()
    for line in filter(None, stderr.splitlines()):
        match = NOT_INSTALLED.match(line)
        if match and match.group(1) in NODE_ONLY:
            missing.add(match.group(1))
        else:
            other.append(line)
    return other, missing


@pytest.fixture
def rendered(example_render) -> Path:
    """The session's one render of the example under the native runtime (tests/conftest.py)."""
    return example_render("example-2node-roce", "native") / "out"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_every_unit_passes_systemd_analyze_verify(rendered, host):
    units = sorted((rendered / host).glob("*.service"))
    assert {u.name for u in units} == UNITS[host]
    check = systemd_verify(*units)
    other, _ = complaints(check.stderr)
    assert not other, f"{host}: systemd-analyze verify: {other}"
    for unit in units:
        assert unit.read_text().startswith("#\n# Ansible managed") or unit.name == "servekit-vllm.service", (
            f"{unit.name}: templates start with {{{{ ansible_managed | comment }}}}")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_the_filter_lets_only_missing_node_binaries_through(rendered, tmp_path):
    broken = tmp_path / "servekit-api-proxy.service"
    broken.write_text((rendered / "spark-01" / "servekit-api-proxy.service").read_text()
                      .replace("Restart=always", "Restart=sometimes"))
    other, _ = complaints(systemd_verify(broken).stderr)
    assert any("restart specifier" in line and "sometimes" in line for line in other), other
