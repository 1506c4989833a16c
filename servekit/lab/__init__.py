"""The local lab: N systemd-nspawn nodes on one bridge, reached over SSH.

Each node is a Debian root filesystem (a copy of one cached debootstrap base)
booted with systemd in its own network namespace. The namespaces hang off a
bridge with MTU 9000 through veth pairs; the host NATs them to the outside so
nodes can use the package registries like real nodes. ``lab up`` writes
``inventory/lab/hosts.yml`` and ``inventory/lab/group_vars/all/lab.yml`` so
``ansible-playbook -i inventory/lab site.yml`` just works.

What lives where (all root-owned):

* cache (kept by ``down``): ``/var/cache/servekit`` -- the base root
  filesystem, the wheelhouse nodes install from offline, the lab model.
* state (removed by ``down``): ``/var/lib/servekit/lab`` -- node root
  filesystems, the SSH key, known_hosts, PID files, console logs, the
  vault password.

The lab needs root, ``debootstrap``, ``systemd-nspawn`` (package
systemd-container), ``iproute2``, ``iptables`` and ``openssh-client``.

Modules, one concern each: ``base`` (settings, nodes, file layout:
``Paths``), ``cache`` (``Cache``: base root filesystem, wheelhouse, model,
container image), ``network`` (bridge, namespaces, veth, NAT), ``nodes``
(``Machines``: root filesystems, nspawn boot, wait, power off), ``files``
(``LabFiles``: inventory, vault, lab.json) and ``core`` (the ``Lab`` that
owns one of each over its ``Paths`` and drives them: ``servekit lab
up/down/status/...``). ``cli`` holds those subcommands, ``image`` the
container runtime's image, ``tinymodel`` the lab model and ``portscan`` the
outsider scan (``servekit lab scan``).

The lab is one of servekit's three rooms (docs/architecture.md): it uses the
core (servekit.project, servekit.vault), the core never imports it.
"""

from servekit.lab.base import (
    BRIDGE,
    LAB_REQUIREMENTS,
    MTU,
    NODE_WHEELHOUSE,
    PLATFORM_PLUGIN_DIR,
    SUBNET,
    LabError,
    Node,
    Paths,
    plan_nodes,
)
from servekit.lab.cache import Cache, host_debian_mirror
from servekit.lab.core import Lab
from servekit.lab.files import LabFiles
from servekit.lab.network import OUTSIDER_ADDRESS
from servekit.lab.nodes import Machines, NodeExited, console_tail
from servekit.vault import VaultSource, register

# The core's ansible runs on the lab's inventory find the lab's vault password file: the lab
# hands it in here, the core never imports the lab (servekit/vault.py).
register(VaultSource(env=lambda root, inventory: Lab.default(root).vault_env(inventory),
                     hint=lambda root: f"the lab's is {Paths.default(root).vault_password}"))

# .ci/secrets-check reads and rotates the vault through Lab.default(...).files.
__all__ = [
    "BRIDGE", "LAB_REQUIREMENTS", "MTU", "NODE_WHEELHOUSE", "OUTSIDER_ADDRESS", "PLATFORM_PLUGIN_DIR",
    "SUBNET", "Cache", "Lab", "LabError", "LabFiles", "Machines", "Node", "NodeExited", "Paths",
    "console_tail", "host_debian_mirror", "plan_nodes",
]
