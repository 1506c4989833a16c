#!/usr/bin/env python3
"""Register the replica engines with the head's vllm-router (its unit's ExecStartPost).

vllm-router's multi-model mode (--enable-igw) starts with no workers; each is
added with POST /workers {"url", "model_id"} and routed to by the request's
`model`. A worker added while its engine is down is kept and marked unhealthy by
the router's health checks until it answers, so every replica is registered
at once. Reads the JSON list the vllm role writes ([{"url", "model_id"}]).
Only the standard library: it runs with the system's python3.

    router_workers.py --router http://127.0.0.1:8200 --workers /etc/servekit/router-workers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def post(router: str, worker: dict, timeout: float) -> int:
    request = urllib.request.Request(  # noqa: S310 - the router on loopback
        f"{router}/workers", method="POST", data=json.dumps(worker).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="the router's URL (loopback)")
    parser.add_argument("--workers", required=True, help="JSON list of {url, model_id}")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the router")
    args = parser.parse_args(argv)
    with open(args.workers, encoding="utf-8") as handle:
        workers = json.load(handle)
    deadline = time.monotonic() + args.wait
    for worker in workers:
        while True:
            try:
                status = post(args.router, worker, timeout=10)
                break
            except OSError as exc:  # the router is not listening yet
                if time.monotonic() > deadline:
                    print(f"router {args.router} did not answer within {args.wait:.0f} s: {exc}",
                          file=sys.stderr)
                    return 1
                time.sleep(0.5)
        if not 200 <= status < 300:
            print(f"router refused worker {worker['url']} ({worker['model_id']}): HTTP {status}",
                  file=sys.stderr)
            return 1
        print(f"registered {worker['url']} for {worker['model_id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
