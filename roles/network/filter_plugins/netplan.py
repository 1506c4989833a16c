"""Filters of the network role: does the host's netplan configuration define an interface?

DGX OS (and Ubuntu desktops) keep a stub netplan file that hands every device
to NetworkManager (Ubuntu's ``01-network-manager-all.yaml``: ``renderer:
NetworkManager`` and nothing else) and define the interfaces in NetworkManager
keyfiles. A netplan stanza with only ``mtu`` for such an interface becomes a
second, address-less NetworkManager profile, which NetworkManager may bring the
interface up from after a reboot (hardware review gpu-roce.md, P2). So netplan
is the place to persist the MTU only when a netplan file defines the interface.
"""

from __future__ import annotations

import fnmatch

import yaml

# netplan's device types whose ids name an interface (netplan.io reference, "Properties for device type")
_DEVICE_TYPES = ("ethernets", "bonds", "bridges", "vlans", "wifis", "modems", "tunnels", "vrfs")


def netplan_defines(contents: list[str], iface: str) -> bool:
    """Whether any of the netplan files' ``contents`` defines ``iface``: as a device id, as an
    ethernet's ``set-name``, or through ``match: {name: <glob>}``."""
    for text in contents:
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            continue
        network = doc.get("network") if isinstance(doc, dict) else None
        if not isinstance(network, dict):
            continue
        for kind in _DEVICE_TYPES:
            for device_id, settings in (network.get(kind) or {}).items():
                device = settings if isinstance(settings, dict) else {}
                match = device.get("match") if isinstance(device.get("match"), dict) else {}
                if iface in (device_id, device.get("set-name")):
                    return True
                if "name" in match and fnmatch.fnmatchcase(iface, str(match["name"])):
                    return True
    return False


class FilterModule:
    def filters(self) -> dict:
        return {"netplan_defines": netplan_defines}
