#!/usr/bin/env python3
"""Print the address this machine sends from towards HOST (run on the control node).

The firewall role's fallback for a connection without SSH_CONNECTION: a UDP
socket's connect() only picks the route and the source address, it sends
nothing (udp(7)), so this works for any host the routing table reaches.
"""

from __future__ import annotations

import socket
import sys


def source_address(host: str, port: int) -> str:
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)
        return sock.getsockname()[0]


if __name__ == "__main__":
    try:
        print(source_address(sys.argv[1], int(sys.argv[2])))
    except (OSError, IndexError, ValueError) as exc:
        sys.exit(f"no source address towards {sys.argv[1:]}: {exc}")
