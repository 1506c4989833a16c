"""TCP connect scan of every port of a few hosts, as an outsider would see them.

    python -m servekit.portscan [--ports 1-65535] [--timeout 1.0] HOST...

Prints JSON ``{"HOST": [open ports]}``. A port counts as open when a TCP
connection completes; refused and timed-out (dropped) ports are closed.
Meant for the lab's own nodes (``servekit lab scan`` runs it in a network
namespace on the lab bridge); do not point it at machines that are not yours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
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


async def _probe(host: str, port: int, timeout: float, gate: asyncio.Semaphore) -> bool:
    async with gate:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


async def scan(hosts: list[str], ports: list[int], timeout: float, concurrency: int) -> dict[str, list[int]]:
    gate = asyncio.Semaphore(concurrency)
    result = {}
    for host in hosts:
        # One lone connection first: it resolves the neighbour (ARP) entry, which
        # would otherwise queue only a few of the first burst of SYNs and drop the rest.
        await _probe(host, ports[0], timeout, gate)
        found = await asyncio.gather(*(_probe(host, port, timeout, gate) for port in ports))
        result[host] = [port for port, is_open in zip(ports, found, strict=True) if is_open]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servekit.portscan", description=__doc__.splitlines()[0])
    parser.add_argument("hosts", nargs="+")
    parser.add_argument("--ports", default="1-65535")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        ports = parse_ports(args.ports)
    except ValueError as exc:
        parser.error(str(exc))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.concurrency + 64) if hard != resource.RLIM_INFINITY else args.concurrency + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    concurrency = min(args.concurrency, want - 64)
    print(json.dumps(asyncio.run(scan(args.hosts, ports, args.timeout, concurrency))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
