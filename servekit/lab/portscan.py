"""TCP connect scan of every port of a few hosts, as an outsider would see them.

    python -m servekit.lab.portscan [--ports 1-65535] [--timeout 1.0] [--expect 22] HOST...

Prints JSON ``{"HOST": [open ports]}``. A port counts as open when a TCP
connection completes; refused and timed-out (dropped) ports are closed.
On a loaded machine a burst of thousands of SYNs can lose an answer, so a
scan could miss an open port: ``--expect`` names ports known to be open (SSH),
a host where one is missing is scanned again at a quarter of the
concurrency and twice the timeout, and the scan fails (exit 1) when it still misses one.
Meant for the lab's own nodes (``servekit lab scan`` runs it in a network
namespace on the lab bridge); do not point it at machines that are not yours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys


def parse_ports(text: str) -> list[int]:
    ports: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"--ports: {part!r} is not within 1-65535")
        ports.update(range(first, last + 1))
    return sorted(ports)


async def _probe(host: str, port: int, timeout: float) -> bool:
    """One TCP connect on a bare non-blocking socket: no stream objects and no task
    per port (asyncio.timeout, not wait_for), so a 131k-port scan stays cheap on a
    busy machine, where CPU and not the network sets its length."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
        except (OSError, TimeoutError):
            return False
        return True


class ScanIncomplete(Exception):
    """A port known to be open was not seen: the scan missed answers."""


async def _scan_host(host: str, ports: list[int], timeout: float, concurrency: int) -> list[int]:
    # One lone connection first: it resolves the neighbour (ARP) entry, which
    # would otherwise queue only a few of the first burst of SYNs and drop the rest.
    await _probe(host, ports[0], timeout)
    found: list[int] = []
    todo = iter(ports)

    async def worker() -> None:  # `concurrency` of these share the ports
        for port in todo:
            if await _probe(host, port, timeout):
                found.append(port)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(ports))))))
    return sorted(found)


async def _scan_until_trusted(host: str, ports: list[int], timeout: float, concurrency: int, *,
                              expect: tuple[int, ...], tries: int) -> list[int]:
    width, wait = concurrency, timeout
    for attempt in range(1, tries + 1):
        found = await _scan_host(host, ports, wait, width)
        missing = sorted(set(expect) & set(ports) - set(found))
        if not missing:
            return found
        print(f"portscan: {host}: scan {attempt} at concurrency {width}, timeout {wait:g} s, missed known "
              f"open port(s) {missing}; scanning again, gentler", file=sys.stderr)
        width, wait = max(50, width // 4), wait * 2
    raise ScanIncomplete(
        f"{host}: port(s) {missing} are known to be open but were not seen in {tries} scans "
        f"(last at concurrency {width}); the result cannot be trusted")


async def scan(hosts: list[str], ports: list[int], timeout: float, concurrency: int, *,
               expect: tuple[int, ...] = (), tries: int = 3) -> dict[str, list[int]]:
    """Every host at once, each with up to ``concurrency`` connections in flight: a
    dropped port costs the whole timeout, so the hosts' waits overlap."""
    found = await asyncio.gather(*(
        _scan_until_trusted(host, ports, timeout, concurrency, expect=expect, tries=tries) for host in hosts))
    return dict(zip(hosts, found, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servekit.lab.portscan",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("hosts", nargs="+")
    parser.add_argument("--ports", default="1-65535")
    # A listening port on the lab's bridge answers within a millisecond; only
    # dropped ports wait out the timeout, so it sets the scan's length
    # (65535 ports / concurrency x timeout per host, the hosts in parallel).
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=4000)
    parser.add_argument("--expect", type=int, action="append", default=[],
                        help="a port known to be open (repeat); a scan that misses it is redone, then fails")
    args = parser.parse_args(argv)
    try:
        ports = parse_ports(args.ports)
    except ValueError as exc:
        parser.error(str(exc))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.concurrency * len(args.hosts) + 64  # every host scanned at once
    want = min(hard, need) if hard != resource.RLIM_INFINITY else need
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    concurrency = max(1, min(args.concurrency, (want - 64) // len(args.hosts)))
    try:
        found = asyncio.run(scan(args.hosts, ports, args.timeout, concurrency, expect=tuple(args.expect)))
    except ScanIncomplete as exc:
        print(f"portscan: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
