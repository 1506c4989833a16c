"""vLLM readiness watchdog, deployed to every node that runs vLLM.

Standard library only: the vllm role copies this file to the node and runs it
with the system Python, outside vLLM's venv or container.

``watch``: every ``--interval`` seconds, ask the serving API for a real
completion (``GET /v1/models``, then ``POST /v1/completions`` with one token):
a multi-node engine whose peer died can keep answering 200 on ``/health``
while every request hangs or fails, so only a completion counts. When
``--failures`` probes in a row fail while the vLLM unit has been active
longer than ``--grace`` seconds (so a model that is still loading, or a start
the playbook is waiting for, is left alone), restart the unit. The head
restarts after ``--failures`` probes; workers pass a larger count, so the head
goes first and a worker restarts only when the head's restart alone did not
bring the cluster back (a worker rank hung on a dead engine). systemd's start
limit on the vLLM unit bounds the restarts of a model that cannot run.

A probe that fails while the engine is making progress (vLLM's
``vllm:generation_tokens_total`` on ``--metrics`` grew since the last look)
does not count: a saturated engine can keep a one-token request queued past
the probe timeout, and restarting it would be the outage.

The watchdog has its own bound: after ``--max-restarts`` restarts within
``--restart-window`` seconds it stops acting and says so (an engine that
hangs again after every restart needs a person, not a loop).

``wait-head``: the workers' ``ExecStartPre=``. Waits until the head's
rendezvous port accepts connections, so a worker rank starts after the head
rank (head-first ordering across nodes) instead of timing out on its own.

The API key comes from the environment (``VLLM_API_KEY``, the unit's root-only
EnvironmentFile); it is never an argument and never logged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

SYSTEMCTL = shutil.which("systemctl") or "/usr/bin/systemctl"


# The CA file that verifies an https API (--cafile; None: the system's store).
CAFILE: str | None = None


def _fetch(url: str, timeout: float, headers: dict | None = None, body: bytes | None = None) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    req = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310 - scheme checked above
    context = ssl.create_default_context(cafile=CAFILE) if url.startswith("https://") else None
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310 - scheme checked above
        return resp.read()


def _call(url: str, headers: dict, timeout: float, body: bytes | None = None) -> dict:
    return json.loads(_fetch(url, timeout, headers, body))


def log(message: str) -> None:
    print(message, flush=True)


def probe(base_url: str, api_key: str | None, timeout: float) -> tuple[bool, str]:
    """One real completion from the API: (served, why not)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        models = _call(f"{base_url}/v1/models", headers, timeout).get("data") or []
        if not models:
            return False, "/v1/models lists no model"
        body = json.dumps(
            {"model": models[0]["id"], "prompt": "ping", "max_tokens": 1, "temperature": 0}
        ).encode()
        choices = _call(f"{base_url}/v1/completions", headers, timeout, body).get("choices") or []
        if not choices:
            return False, "completion without choices"
        return True, ""
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} from {exc.url}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{type(exc).__name__}: {reason}"


PROGRESS_METRIC = "vllm:generation_tokens_total"


def generated_tokens(metrics_text: str) -> float | None:
    """Sum of vLLM's generated-token counter over its label sets (Prometheus text format)."""
    total = None
    for line in metrics_text.splitlines():
        if line.startswith(PROGRESS_METRIC) and line[len(PROGRESS_METRIC)] in "{ ":
            total = (total or 0.0) + float(line.rsplit(None, 1)[1])
    return total


def read_progress(url: str | None, timeout: float) -> float | None:
    if not url:
        return None
    try:
        return generated_tokens(_fetch(url, timeout).decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def unit_uptime(unit: str) -> float | None:
    """Seconds the unit has been active, None when it is not active."""
    out = subprocess.run(
        [SYSTEMCTL, "show", unit, "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic"],
        capture_output=True, text=True, check=False,
    ).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("ActiveState") != "active":
        return None
    entered_us = int(props.get("ActiveEnterTimestampMonotonic") or 0)
    return time.clock_gettime(time.CLOCK_MONOTONIC) - entered_us / 1e6


@dataclass
class Decision:
    restart: bool
    failures: int


def decide(served: bool, failures: int, uptime: float | None, *, grace: float, limit: int,
           progressed: bool = False) -> Decision:
    """The watchdog's rule, apart from I/O (unit tested).

    A unit that is not active is systemd's business (Restart=, start limit):
    the count starts over, as it does when a completion came back or the
    engine generated tokens since the last probe (busy, not dead). A unit
    younger than ``grace`` is still loading: failures are counted but never
    acted on. Otherwise ``limit`` failures in a row restart it, and the count
    starts over.
    """
    if uptime is None or served or progressed:
        return Decision(False, 0)
    failures += 1
    if uptime < grace or failures < limit:
        return Decision(False, failures)
    return Decision(True, 0)


def allowed_restart(history: list[float], now: float, limit: int, window: float) -> bool:
    """Whether one more restart stays within ``limit`` restarts per ``window`` seconds."""
    return sum(1 for t in history if now - t < window) < limit


def watch(args: argparse.Namespace) -> int:
    api_key = os.environ.get("VLLM_API_KEY") or None
    failures = 0
    restarts: list[float] = []
    gave_up = False
    tokens = read_progress(args.metrics, args.timeout)
    log(
        f"watching {args.unit} through {args.url}: restart after {args.failures} failed "
        f"completions {args.interval:g} s apart, once active for {args.grace:g} s"
        + (f"; progress from {args.metrics}" if args.metrics else "")
    )
    while True:
        time.sleep(args.interval)
        uptime = unit_uptime(args.unit)
        if uptime is None:
            failures = 0
            continue
        served, why = probe(args.url, api_key, args.timeout)
        before, tokens = tokens, read_progress(args.metrics, args.timeout)
        progressed = None not in (before, tokens) and tokens > before
        if served and failures:
            log(f"{args.url} serves again after {failures} failed probe(s)")
        if not served:
            busy = f"; busy, not dead: {tokens - before:.0f} tokens generated since" if progressed else ""
            log(f"no completion from {args.url} ({why}); unit active {uptime:.0f} s{busy}")
        decision = decide(served, failures, uptime, grace=args.grace, limit=args.failures,
                          progressed=progressed)
        failures = decision.failures
        if decision.restart:
            now = time.monotonic()
            if not allowed_restart(restarts, now, args.max_restarts, args.restart_window):
                if not gave_up:
                    log(f"{args.failures} failed completions in a row, but {args.unit} was restarted "
                        f"{args.max_restarts} times in {args.restart_window:g} s: not restarting again; "
                        f"read its journal, fix, then rerun the vllm stage")
                gave_up = True
                continue
            gave_up = False
            restarts.append(now)
            log(f"{args.failures} failed completions in a row: restarting {args.unit}")
            subprocess.run([SYSTEMCTL, "restart", "--no-block", args.unit], check=False)


def wait_head(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with socket.create_connection((args.host, args.port), timeout=3):
                log(f"head rendezvous {args.host}:{args.port} is up")
                return 0
        except OSError as exc:
            if time.monotonic() >= deadline:
                log(f"head rendezvous {args.host}:{args.port} not up after {args.timeout:g} s: {exc}")
                return 1
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servekit-vllm-watchdog", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="restart the vLLM unit when the API stops serving")
    w.add_argument("--url", required=True, help="base URL of the serving API, e.g. http://10.0.0.1:8000")
    w.add_argument("--metrics",
                   help="vLLM's /metrics URL: a failed probe while tokens are generated does not count")
    w.add_argument("--unit", default="servekit-vllm.service")
    w.add_argument("--interval", type=float, default=10)
    w.add_argument("--timeout", type=float, default=30, help="seconds one probe request may take")
    w.add_argument("--failures", type=int, default=3, help="failed probes in a row before a restart")
    w.add_argument("--grace", type=float, default=900, help="seconds after a start before acting")
    w.add_argument("--max-restarts", type=int, default=5, help="restarts per --restart-window at most")
    w.add_argument("--restart-window", type=float, default=3600)
    w.add_argument("--cafile", default="", help="CA file for an https --url ('': the system's store)")
    w.set_defaults(func=watch)
    h = sub.add_parser("wait-head", help="wait until the head's rendezvous port accepts connections")
    h.add_argument("--host", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--timeout", type=float, default=300)
    h.set_defaults(func=wait_head)
    args = parser.parse_args(argv)
    global CAFILE  # noqa: PLW0603 - one setting for every request of this process
    CAFILE = getattr(args, "cafile", "") or None
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
