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

Modules, one concern each: ``base`` (settings, nodes, file layout),
``cache`` (base root filesystem, wheelhouse, model), ``network`` (bridge,
namespaces, veth, NAT), ``nodes`` (root filesystems, nspawn boot, wait,
power off), ``files`` (inventory, vault, lab.json) and ``core`` (the
``Lab`` that drives them: ``servekit lab up/down/status/...``).
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
from servekit.lab.cache import ensure_platform_wheel, host_debian_mirror
from servekit.lab.core import Lab
from servekit.lab.files import (
    ensure_vault,
    load_nodes,
    read_vault,
    save_state,
    vault_env,
    vault_file,
    write_inventory,
    write_vault,
)
from servekit.lab.network import OUTSIDER_ADDRESS
from servekit.lab.nodes import NodeExited, console_tail, wait_ready

# .ci/secrets-check reads and rotates the vault through Paths.default,
# read_vault, write_vault and vault_file.
__all__ = [
    "BRIDGE", "LAB_REQUIREMENTS", "MTU", "NODE_WHEELHOUSE", "OUTSIDER_ADDRESS", "PLATFORM_PLUGIN_DIR",
    "SUBNET", "Lab", "LabError", "Node", "NodeExited", "Paths", "console_tail", "ensure_platform_wheel",
    "ensure_vault", "host_debian_mirror", "load_nodes", "plan_nodes", "read_vault", "save_state",
    "vault_env", "vault_file", "wait_ready", "write_inventory", "write_vault",
]
