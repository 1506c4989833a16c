"""``servekit lab ...``: its subcommands and what each does.

servekit/cli.py (the composition root) mounts ``add_parser`` under the top-level parser and
reports a ``LabError`` as one line; the lab calls into the core, never the other way.
"""

from __future__ import annotations

import argparse
import sys
import time

from servekit.lab.core import Lab
from servekit.lab.network import OUTSIDER_ADDRESS
from servekit.project import project_root


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``servekit lab ...``, under the top-level parser's subcommands ``sub`` (servekit/cli.py)."""
    lab = sub.add_parser("lab", help="the local lab cluster (systemd-nspawn nodes on a bridge)")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    lab_up = lab_sub.add_parser("up", help="build and boot the nodes; write inventory/lab")
    lab_up.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    lab_up.add_argument("--container-image", action="store_true",
                        help="also build the image archive that cluster_runtime=container imports")
    lab_up.set_defaults(func=cmd_up)
    lab_down = lab_sub.add_parser("down", help="stop and remove every node, netns, bridge and rule")
    lab_down.add_argument("--purge", action="store_true", help="also remove the cached base, wheels, model")
    lab_down.set_defaults(func=cmd_down)
    lab_sub.add_parser("status", help="nodes, addresses and systemd state").set_defaults(
        func=cmd_status)
    lab_scan = lab_sub.add_parser("scan", help="scan every TCP port of every node from an outsider namespace")
    lab_scan.add_argument("--ports", default="1-65535", help="ports to try (default 1-65535)")
    lab_scan.add_argument("--api-port", type=int, default=8000, help="the API port allowed on the head")
    lab_scan.set_defaults(func=cmd_scan)
    for verb, text, func in (("stop", "power one node off (its files stay)", cmd_stop),
                             ("start", "boot a stopped node again", cmd_start)):
        one = lab_sub.add_parser(verb, help=text)
        one.add_argument("node", help="node name, e.g. lab-worker-1")
        one.set_defaults(func=func)
    lab_ssh = lab_sub.add_parser("ssh", help="ssh to a node (as root)")
    lab_ssh.add_argument("node", help="node name, e.g. lab-head")
    lab_ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    lab_ssh.set_defaults(func=cmd_ssh)
    lab_sub.add_parser("vault-path", help="print the lab's vault password file (for "
                       "ANSIBLE_VAULT_PASSWORD_FILE)").set_defaults(func=cmd_vault_path)


def _lab() -> Lab:
    return Lab.default(project_root())


def cmd_up(args: argparse.Namespace) -> int:
    _lab().up(workers=args.workers, container_image=args.container_image)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _lab().down(purge=args.purge)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = _lab().status()
    if not rows:
        print("no lab is up")
    for row in rows:
        print(f"{row['name']:<14} {row['group']:<8} {row['address']:<12} "
              f"pid={row['pid'] or '-':<8} {row['state']}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Print what an outsider reaches; exit 1 when more than SSH (and the API on the head) answers."""
    the_lab = _lab()
    started = time.monotonic()
    found = the_lab.scan(args.ports)
    nodes = {n.name: n for n in the_lab.nodes}
    unexpected = {}
    for name, ports in found.items():
        allowed = {22} | ({args.api_port} if nodes[name].group == "head" else set())
        print(f"{name:<14} {nodes[name].address:<12} open: {', '.join(map(str, ports)) or 'none'}")
        if set(ports) - allowed:
            unexpected[name] = sorted(set(ports) - allowed)
    print(f"scanned {args.ports} on {len(found)} nodes from {OUTSIDER_ADDRESS} "
          f"in {time.monotonic() - started:.0f} s")
    if unexpected:
        print(f"servekit lab scan: reachable beyond SSH and the API: {unexpected}", file=sys.stderr)
        return 1
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _lab().stop(args.node)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    _lab().start(args.node)
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    return _lab().ssh(args.node, args.remote)


def cmd_vault_path(args: argparse.Namespace) -> int:
    """The lab's vault password file, for ANSIBLE_VAULT_PASSWORD_FILE (the Makefile, .ci scripts)."""
    print(_lab().paths.vault_password)
    return 0
