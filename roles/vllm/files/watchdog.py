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

With ``--metrics-file``, every loop writes the watchdog's counters (probes,
failed probes, restarts) and the vLLM unit's start time in Prometheus text
format to that file, replaced atomically: node_exporter's textfile collector
(the monitoring stage) serves it, and the alert rules read it.

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


def unit_properties(unit: str) -> dict[str, str]:
    out = subprocess.run(
        [SYSTEMCTL, "show", unit, "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic",
         "-p", "ActiveEnterTimestamp", "-p", "NRestarts", "--timestamp=unix"],
        capture_output=True, text=True, check=False,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def uptime_of(props: dict[str, str]) -> float | None:
    """Seconds the unit has been active, None when it is not active."""
    if props.get("ActiveState") != "active":
        return None
    entered_us = int(props.get("ActiveEnterTimestampMonotonic") or 0)
    return time.clock_gettime(time.CLOCK_MONOTONIC) - entered_us / 1e6


def unit_uptime(unit: str) -> float | None:
    """Seconds the unit has been active, None when it is not active."""
    return uptime_of(unit_properties(unit))


def started_at(props: dict[str, str]) -> float:
    """Unix time the unit last became active (``--timestamp=unix`` gives ``@1718000000``), 0 if never."""
    value = props.get("ActiveEnterTimestamp", "").lstrip("@")
    try:
        return float(value)
    except ValueError:
        return 0.0


@dataclass
class Counters:
    """What the watchdog saw since it started (counters reset with the process, as Prometheus expects)."""

    probes: int = 0
    failed_probes: int = 0
    restarts: int = 0
    last_probe_ok: bool | None = None
    unit_active: bool = False
    unit_started_at: float = 0.0
    unit_systemd_restarts: int = 0
    gave_up: bool = False


# name, type, help, value of Counters
_METRICS = (
    ("servekit_watchdog_probes_total", "counter", "Readiness probes (real completions) sent.",
     lambda c: c.probes),
    ("servekit_watchdog_failed_probes_total", "counter", "Readiness probes that got no completion.",
     lambda c: c.failed_probes),
    ("servekit_watchdog_restarts_total", "counter", "Restarts of the vLLM unit by the watchdog.",
     lambda c: c.restarts),
    ("servekit_watchdog_last_probe_success", "gauge",
     "1 when the last probe got a completion, 0 when not, -1 before the first probe.",
     lambda c: -1 if c.last_probe_ok is None else int(c.last_probe_ok)),
    ("servekit_watchdog_unit_active", "gauge", "1 while the vLLM unit is active.",
     lambda c: int(c.unit_active)),
    ("servekit_watchdog_unit_start_time_seconds", "gauge",
     "Unix time the vLLM unit last became active (systemd ActiveEnterTimestamp).",
     lambda c: c.unit_started_at),
    ("servekit_watchdog_unit_systemd_restarts", "gauge",
     "Automatic restarts of the vLLM unit by systemd (NRestarts) since it was last started by hand.",
     lambda c: c.unit_systemd_restarts),
    ("servekit_watchdog_gave_up", "gauge",
     "1 while the watchdog stopped restarting (--max-restarts reached within --restart-window).",
     lambda c: int(c.gave_up)),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(counters: Counters, unit: str) -> str:
    """The counters in Prometheus text exposition format 0.0.4, labelled with the vLLM unit."""
    lines = []
    for name, kind, text, value in _METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}",
                  f'{name}{{unit="{_label(unit)}"}} {value(counters)!r}']
    return "\n".join(lines) + "\n"


def write_metrics(path: str | None, counters: Counters, unit: str) -> None:
    """Replace ``path`` atomically (a reader never sees half a file); errors are logged, not fatal."""
    if not path:
        return
    try:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(render_metrics(counters, unit))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        log(f"cannot write metrics to {path}: {exc}")


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
    # the unit's state before the first write: a start time that jumps from
    # 0 would read as a restart to the alert rules
    props = unit_properties(args.unit)
    counters = Counters(unit_active=uptime_of(props) is not None, unit_started_at=started_at(props),
                        unit_systemd_restarts=int(props.get("NRestarts") or 0))
    write_metrics(args.metrics_file, counters, args.unit)
    log(
        f"watching {args.unit} through {args.url}: restart after {args.failures} failed "
        f"completions {args.interval:g} s apart, once active for {args.grace:g} s"
        + (f"; progress from {args.metrics}" if args.metrics else "")
    )
    while True:
        time.sleep(args.interval)
        props = unit_properties(args.unit)
        uptime = uptime_of(props)
        counters.unit_active = uptime is not None
        counters.unit_started_at = started_at(props)
        counters.unit_systemd_restarts = int(props.get("NRestarts") or 0)
        if uptime is None:
            failures = 0
            write_metrics(args.metrics_file, counters, args.unit)
            continue
        served, why = probe(args.url, api_key, args.timeout)
        counters.probes += 1
        counters.failed_probes += 0 if served else 1
        counters.last_probe_ok = served
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
        counters.gave_up = gave_up
        write_metrics(args.metrics_file, counters, args.unit)
        if decision.restart:
            now = time.monotonic()
            if not allowed_restart(restarts, now, args.max_restarts, args.restart_window):
                if not gave_up:
                    log(f"{args.failures} failed completions in a row, but {args.unit} was restarted "
                        f"{args.max_restarts} times in {args.restart_window:g} s: not restarting again; "
                        f"read its journal, fix, then rerun the vllm stage")
                gave_up = counters.gave_up = True
                write_metrics(args.metrics_file, counters, args.unit)
                continue
            gave_up = counters.gave_up = False
            restarts.append(now)
            counters.restarts += 1
            write_metrics(args.metrics_file, counters, args.unit)
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


def build_parser() -> argparse.ArgumentParser:
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
    w.add_argument("--metrics-file", default="",
                   help="write the watchdog's counters here in Prometheus text format ('': do not)")
    w.set_defaults(func=watch)
    h = sub.add_parser("wait-head", help="wait until the head's rendezvous port accepts connections")
    h.add_argument("--host", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--timeout", type=float, default=300)
    h.set_defaults(func=wait_head)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    global CAFILE  # noqa: PLW0603 - one setting for every request of this process
    CAFILE = getattr(args, "cafile", "") or None
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
