"""The nodes themselves: root filesystems from the cached base, boot with systemd-nspawn, wait, power off."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from servekit.lab.base import (
    BOOT_TIMEOUT_S,
    NODE_WHEELHOUSE,
    STOP_GRACE_S,
    SUBNET,
    LabError,
    Node,
    Paths,
    log,
    run,
    write_file,
)
from servekit.lab.network import host_nameserver


class NodeExited(LabError):
    """A node's systemd-nspawn ended before its systemd came up."""


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def console_tail(console: Path, lines: int = 4) -> list[str]:
    """The last non-empty lines of a node's console log, without colour codes."""
    try:
        text = console.read_bytes()[-8192:].decode(errors="replace")
    except OSError:
        return ["(no console log)"]
    kept = [ANSI_ESCAPE.sub("", line).strip() for line in text.splitlines()]
    return [line for line in kept if line][-lines:] or ["(empty)"]


@dataclass
class Machines:
    """The lab's nodes as machines: root filesystems, nspawn processes, SSH (their files under ``paths``)."""

    paths: Paths

    def ensure_key(self) -> None:
        paths = self.paths
        if paths.key.is_file():
            return
        paths.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "servekit-lab", "-f", str(paths.key)])

    def prepare_rootfs(self, node: Node, nodes: list[Node]) -> None:
        paths = self.paths
        rootfs = paths.rootfs(node)
        if (rootfs / ".servekit-node").is_file():
            return
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", str(paths.base), str(rootfs)])
        write_file(rootfs / "etc/hostname", node.name + "\n")
        write_file(rootfs / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hosts += [f"{n.address}\t{n.name}" for n in nodes]
        write_file(rootfs / "etc/hosts", "\n".join(hosts) + "\n")
        # The data interface as the lab hands it over: address and route, default
        # MTU. The network role raises the MTU to 9000, as on a real node.
        write_file(
            rootfs / f"etc/systemd/network/10-{node.data_if}.network",
            f"[Match]\nName={node.data_if}\n\n[Network]\nAddress={node.address}/24\n"
            f"Gateway={SUBNET}.1\nDNS={host_nameserver()}\n",
        )
        resolv = rootfs / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        write_file(resolv, f"nameserver {host_nameserver()}\n")
        pub = paths.key.with_suffix(".pub").read_text()
        ssh_dir = rootfs / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file(ssh_dir / "authorized_keys", pub, 0o600)
        run(["ssh-keygen", "-A", "-f", str(rootfs)])
        # root's user manager stays up (lingering). Without it every SSH
        # session that ends last stops user@0.service, and in the nspawn node
        # (hybrid cgroups) that stop can hang in final-sigkill for minutes while
        # every new SSH session waits for it: each `servekit lab ssh` to the
        # worker hung for about 3 minutes on the container lab, 2026-12-08.
        write_file(rootfs / "var/lib/systemd/linger/root", "")
        (rootfs / ".servekit-node").write_text(node.name + "\n")

    def pid(self, node: Node) -> int | None:
        """The pid of the node's systemd-nspawn, if it runs."""
        paths = self.paths
        try:
            pid = int(paths.pidfile(node).read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"systemd-nspawn" in cmdline and str(paths.rootfs(node)).encode() in cmdline else None

    def start(self, node: Node) -> None:
        paths = self.paths
        if self.pid(node):
            return
        images = paths.cache / "images"
        images.mkdir(parents=True, exist_ok=True)
        # nspawn starts inside the node's namespace (not --network-namespace-path),
        # so the sysfs it mounts shows the node's interfaces, not the host's.
        argv = [
            "nsenter", f"--net=/run/netns/{node.netns}",
            "systemd-nspawn", "--quiet", "-D", str(paths.rootfs(node)), "-M", node.name,
            "--register=no", "--keep-unit", "-b", "--console=read-only",
            # The node configures its own data interface (networkd, the network role).
            "--capability=CAP_NET_ADMIN",
            f"--bind-ro={paths.wheelhouse}:{NODE_WHEELHOUSE}",
            # The container image archives (servekit/lab/image.py), read where they
            # lie: the runtime role imports them with runtime_container_image_archive_remote_src
            # instead of copying 4.4 GB over SSH to every node.
            f"--bind-ro={images}:{images}",
        ]
        console = (paths.node_dir(node) / "console.log").open("ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True)
        console.close()
        paths.pidfile(node).write_text(f"{proc.pid}\n")
        log(f"{node.name}: booting (pid {proc.pid}, {node.address})")

    def ssh_argv(self, node: Node, *command: str) -> list[str]:
        paths = self.paths
        return [
            "ssh", "-i", str(paths.key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=3",
            "-o", f"UserKnownHostsFile={paths.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            f"root@{node.address}", *command,
        ]

    def write_known_hosts(self, nodes: list[Node]) -> None:
        paths = self.paths
        lines = []
        for node in nodes:
            pub = (paths.rootfs(node) / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{node.address},{node.name} {pub[0]} {pub[1]}")
        write_file(paths.known_hosts, "\n".join(lines) + "\n", 0o600)

    def wait_ready(self, nodes: list[Node], timeout_s: float = BOOT_TIMEOUT_S) -> None:
        paths = self.paths
        deadline = time.monotonic() + timeout_s
        pending = list(nodes)
        while pending:
            for node in list(pending):
                if not self.pid(node):
                    console = paths.node_dir(node) / "console.log"
                    raise NodeExited(f"{node.name}: systemd-nspawn exited; last console lines: "
                                     f"{' | '.join(console_tail(console))} (see {console})")
                probe = run(self.ssh_argv(node, "systemctl", "is-system-running", "--wait"), check=False)
                if probe.stdout.strip() in {"running", "degraded"}:
                    pending.remove(node)
            if pending and time.monotonic() > deadline:
                names = ", ".join(n.name for n in pending)
                raise LabError(
                    f"{names}: no SSH/systemd after {timeout_s:.0f} s; see console.log under {paths.state}"
                )
            if pending:
                time.sleep(1)

    def stop(self, nodes: list[Node], grace_s: float = STOP_GRACE_S) -> None:
        """Power every node off at once (SIGTERM: nspawn shuts the container down cleanly)."""
        running = {node.name: pid for node in nodes if (pid := self.pid(node))}
        for pid in running.values():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in running.values()):
            time.sleep(0.5)
        for name, pid in running.items():
            if Path(f"/proc/{pid}").exists():
                log(f"{name}: still running after {grace_s:.0f} s; killing pid {pid}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            log(f"{name}: stopped")
        time.sleep(0.5)
