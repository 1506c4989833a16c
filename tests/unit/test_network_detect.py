"""Where the network stage persists the MTU (roles/network/tasks/detect.yml).

Hardware review gpu-roce.md P2: netplan was picked whenever /etc/netplan had a
file. On DGX OS that file is a stub handing every device to NetworkManager,
and the interface lives in a NetworkManager keyfile: an mtu-only netplan
stanza for it becomes a second, address-less profile. The role's filter says
whether a netplan file defines the interface; only then is netplan used.
"""

from __future__ import annotations

import importlib.util

import pytest
from helpers import ROOT

NETPLAN = ROOT / "tests/fixtures/public/netplan"


def _filters():
    spec = importlib.util.spec_from_file_location("netplan", ROOT / "roles/network/filter_plugins/netplan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_networkmanager_stub_defines_no_interface():
    stub = (NETPLAN / "01-network-manager-all.yaml").read_text()
    assert _filters().netplan_defines([stub], "enp1s0f0np0") is False


@pytest.mark.parametrize(("iface", "defined"), [
    ("enp1s0f0np0", True),   # by its id
    ("eno1", True),          # by set-name (its id is the same here)
    ("enp2s0f0np0", False),  # another rail: not in any file
])
def test_an_interface_a_netplan_file_defines(iface, defined):
    files = [(NETPLAN / name).read_text() for name in ("01-network-manager-all.yaml", "50-cloud-init.yaml")]
    assert _filters().netplan_defines(files, iface) is defined


def test_match_by_name_glob_and_set_name_count_and_broken_files_do_not():
    filters = _filters()
    by_match = "network:\n  version: 2\n  ethernets:\n    data:\n      match: {name: 'enp1s0f*np0'}\n"
    by_set_name = ("network:\n  version: 2\n  ethernets:\n    rail0:\n"
                   "      match: {macaddress: 'aa:bb:cc:dd:ee:ff'}\n      set-name: enp9s0f0np0\n")
    assert filters.netplan_defines([by_match], "enp1s0f1np0") is True
    assert filters.netplan_defines([by_set_name], "enp9s0f0np0") is True
    assert filters.netplan_defines(["network: [unclosed", "", "# only a comment\n"], "enp1s0f0np0") is False
