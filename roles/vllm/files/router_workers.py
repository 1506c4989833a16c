#!/usr/bin/env python3
"""The replica engines in the head's vllm-router: registration and the rotation keeper.

``register`` (the default; the router unit's ExecStartPost): vllm-router's
multi-model mode (--enable-igw) starts with no workers; each is added with
POST /workers {"url", "model_id"} and routed to by the request's `model`. A
worker added while its engine is down is kept and marked unhealthy by the
router's health checks until it answers, so every replica is registered at
once. Reads the JSON list the vllm role writes ([{"url", "model_id"}]).

``keep`` (its own unit, beside the router): a replica whose engine lost a
rank can answer 200 on /health while every completion hangs (vLLM 0.32 with
the Ray executor), and the router, which asks only /health, keeps sending it
requests. Every --interval seconds the keeper asks each replica for a real
one-token completion; a replica that gives none is taken out of the router
(DELETE /workers/<url>) while another healthy replica of its deployment stays
in, and put back (POST /workers) once it answers again. It puts back only
what it took out itself: the roll takes replicas out on purpose. A replica
whose probe gives nothing but whose vllm:generation_tokens_total grew while
the probe waited is busy, not dead (a saturated engine queues the probe): it
stays.
With --metrics-file it writes servekit_router_keeper_out{worker} (1 while it
holds a replica out) for node_exporter's textfile collector: the router's own
vllm_router_worker_health keeps a removed worker's last value, so the
ReplicaOutOfRotation alert reads this one too.

Only the standard library: it runs with the system's python3.

    router_workers.py --router http://127.0.0.1:8200 --workers /etc/servekit/router-workers.json
    router_workers.py keep --router http://127.0.0.1:8200 --workers /etc/servekit/router-workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

COMMANDS = ("register", "keep")


def log(message: str) -> None:
    print(message, flush=True)


def _request(url: str, method: str, timeout: float, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of one HTTP call; an HTTP error status is an answer, not an exception."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def post(router: str, worker: dict, timeout: float) -> int:
    return _request(f"{router}/workers", "POST", timeout,
                    {"url": worker["url"], "model_id": worker["model_id"]})[0]


def delete(router: str, url: str, timeout: float) -> int:
    # the router takes the worker's URL as one path segment, as the roll sends it
    return _request(f"{router}/workers/{urllib.parse.quote(url, safe='')}", "DELETE", timeout)[0]


def register(args: argparse.Namespace) -> int:
    workers = read_workers(args.workers)
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
        log(f"registered {worker['url']} for {worker['model_id']}")
    return 0


def read_workers(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# --------------------------------------------------------------------------
# keep
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """One worker as the router's GET /workers lists it."""

    url: str
    model_id: str
    healthy: bool


@dataclass(frozen=True)
class Action:
    """What the keeper does with one replica after its probe: ``kind`` is one of
    remove, hold (would remove, but it is its deployment's last), add, forget
    (someone else put back a replica the keeper took out) or none."""

    kind: str
    reason: str


def decide(worker: dict, served: bool, registered: list[Registered], *,
           removed: set[str], failing: set[str]) -> Action:
    """The keeper's rule for one replica ({url, model_id}): its probe ``served`` (a
    completion came back), the router's workers, the URLs the keeper took out itself,
    and those whose probe failed this round (they do not count as another healthy replica)."""
    url, model_id = worker["url"], worker["model_id"]
    listed = any(w.url == url for w in registered)
    if served:
        if url not in removed:
            return Action("none", "serving")
        if listed:
            return Action("forget", "serving, and already back in the router (not by the keeper)")
        return Action("add", "serving again")
    if not listed:
        # out already: by the keeper earlier, or by someone else (the roll restarts it)
        return Action("none", "not in the router")
    others = [w for w in registered if w.model_id == model_id and w.url != url
              and w.healthy and w.url not in failing]
    if not others:
        return Action("hold", "no completion, but no other healthy replica of its deployment is in")
    return Action("remove", f"no completion; {len(others)} other healthy replica(s) stay in the router")


TOKENS = re.compile(r"(?m)^vllm:generation_tokens_total(?:\{[^}]*\})? ([0-9.eE+-]+)$")


def generated_tokens(url: str, timeout: float) -> float | None:
    """vLLM's vllm:generation_tokens_total of a replica (its /metrics), None when it gives none."""
    try:
        status, text = _request(f"{url}/metrics", "GET", timeout)
    except (OSError, ValueError):
        return None
    found = TOKENS.findall(text.decode(errors="replace")) if status == 200 else []
    return sum(float(value) for value in found) if found else None


def probe(url: str, model_id: str, api_key: str | None, timeout: float) -> tuple[bool | None, str]:
    """One real one-token completion from a replica engine: (served, why not).
    served is None when the engine refused the probe's key (401/403): that says
    nothing of the engine, and is not a reason to take it out."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model_id, "prompt": "ping", "max_tokens": 1, "temperature": 0}
    try:
        status, text = _request(f"{url}/v1/completions", "POST", timeout, body, headers)
    except (OSError, ValueError) as exc:  # timeouts, refused connections, resets
        return False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    if status in (401, 403):
        return None, f"HTTP {status}: the engine refused the probe's key (VLLM_API_KEY)"
    if status != 200:
        return False, f"HTTP {status}"
    try:
        choices = json.loads(text).get("choices")
    except ValueError:
        choices = None
    return (True, "") if choices else (False, "a completion without choices")


def router_workers(router: str, timeout: float) -> list[Registered]:
    status, text = _request(f"{router}/workers", "GET", timeout)
    if status != 200:
        raise OSError(f"GET /workers: HTTP {status}")
    return [Registered(w["url"], w.get("model_id") or (w.get("metadata") or {}).get("model_id", ""),
                       bool(w.get("is_healthy")))
            for w in json.loads(text).get("workers", [])]


def render_out(urls: list[str], removed: set[str]) -> str:
    """servekit_router_keeper_out per replica, Prometheus text format 0.0.4."""
    lines = ["# HELP servekit_router_keeper_out 1 while the rotation keeper holds the replica out",
             "# TYPE servekit_router_keeper_out gauge"]
    for url in urls:
        label = url.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        lines.append(f'servekit_router_keeper_out{{worker="{label}"}} {1 if url in removed else 0}')
    return "\n".join(lines) + "\n"


def write_out(path: str | None, urls: list[str], removed: set[str]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file); errors are logged, not fatal."""
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(render_out(urls, removed))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        log(f"cannot write metrics to {path}: {exc}")


class Keeper:
    """The keeper's memory across rounds: the replicas it took out (also in --state,
    so a restart of the keeper alone does not forget them) and what it last said
    of each replica it left alone, so the journal gets one line per change."""

    def __init__(self, router: str, workers_file: str, timeout: float, state: str | None,
                 metrics_file: str | None = None) -> None:
        self.router, self.workers_file, self.timeout, self.state = router, workers_file, timeout, state
        self.metrics_file = metrics_file
        self.api_key = os.environ.get("VLLM_API_KEY") or None
        self.removed: set[str] = set()
        self.said: dict[str, str] = {}
        if state and os.path.exists(state):
            with open(state, encoding="utf-8") as handle:
                self.removed = set(json.load(handle))

    def save(self) -> None:
        if not self.state:
            return
        temporary = f"{self.state}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(sorted(self.removed), handle)
        os.replace(temporary, self.state)

    def say_once(self, url: str, message: str) -> None:
        if self.said.get(url) != message:
            self.said[url] = message
            log(message)

    def round(self) -> None:
        workers = read_workers(self.workers_file)
        try:
            self._round(workers)
        finally:
            write_out(self.metrics_file, [w["url"] for w in workers], self.removed)

    def _round(self, workers: list[dict]) -> None:
        known = {w["url"] for w in workers}
        if self.removed - known:  # scaled away: nothing to put back
            self.removed &= known
            self.save()
        # each replica's generated tokens before and after its probe: a dead engine's stand still
        # while the probe waits, a saturated one's grow
        with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:
            before = list(pool.map(lambda w: generated_tokens(w["url"], self.timeout), workers))
            results = list(pool.map(lambda w: probe(w["url"], w["model_id"], self.api_key, self.timeout),
                                    workers))
            after = list(pool.map(lambda w, r: generated_tokens(w["url"], self.timeout) if r[0] is False
                                  else None, workers, results))
        busy = {w["url"] for w, start, end in zip(workers, before, after, strict=True)
                if start is not None and end is not None and end > start}
        try:
            registered = router_workers(self.router, self.timeout)
        except (OSError, ValueError) as exc:
            self.say_once("router", f"router {self.router} did not list its workers: {exc}")
            return
        self.said.pop("router", None)
        failing = {w["url"] for w, (served, _) in zip(workers, results, strict=True)
                   if served is False and w["url"] not in busy}
        for worker, (served, why) in zip(workers, results, strict=True):
            url, model_id = worker["url"], worker["model_id"]
            where = f"deployment {model_id} replica {url}"
            if served is None:
                self.say_once(url, f"{where}: probe inconclusive, left as it is: {why}")
                continue
            if url in busy:
                self.say_once(url, f"{where}: no completion ({why}), but it generated tokens while the "
                                   f"probe waited: busy, not dead; left as it is")
                continue
            action = decide(worker, served, registered, removed=self.removed, failing=failing)
            self.act(action, worker, why, registered)

    def act(self, action: Action, worker: dict, why: str, registered: list[Registered]) -> None:
        url, model_id = worker["url"], worker["model_id"]
        where = f"deployment {model_id} replica {url}"
        reason = f"{action.reason} ({why})" if why else action.reason
        if action.kind == "remove":
            status = delete(self.router, url, self.timeout)
            if status == 200:
                self.removed.add(url)
                registered[:] = [w for w in registered if w.url != url]
                self.save()
                self.said.pop(url, None)
                log(f"{where}: taken out of the router: {reason}")
            else:  # 404: someone else took it out meanwhile (the roll); not the keeper's to put back
                log(f"{where}: DELETE /workers answered HTTP {status}; left to whoever took it out")
        elif action.kind == "add":
            status = post(self.router, {"url": url, "model_id": model_id}, self.timeout)
            if 200 <= status < 300:
                self.removed.discard(url)
                self.save()
                log(f"{where}: put back in the router: {reason}")
            else:
                self.say_once(url, f"{where}: the router refused it back: HTTP {status}")
        elif action.kind == "forget":
            self.removed.discard(url)
            self.save()
            log(f"{where}: {reason}; the keeper no longer holds it out")
        elif action.kind == "hold":
            self.say_once(url, f"{where}: left in the router: {reason}")
        else:
            self.said.pop(url, None)


def keep(args: argparse.Namespace) -> int:
    keeper = Keeper(args.router, args.workers, args.timeout, args.state, args.metrics_file)
    log(f"keeping {args.workers} in {args.router}: a completion from each every {args.interval:g} s "
        f"(timeout {args.timeout:g} s); holding out {sorted(keeper.removed) or 'none'}")
    while True:
        started = time.monotonic()
        try:
            keeper.round()
        except (OSError, ValueError) as exc:  # the workers file or the router: try again next round
            log(f"round failed: {type(exc).__name__}: {exc}")
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--router", required=True, help="the router's URL (loopback)")
    common.add_argument("--workers", required=True, help="JSON list of {url, model_id}")
    sub = commands.add_parser("register", parents=[common], help="register every replica engine (default)")
    sub.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the router")
    sub.set_defaults(func=register)
    sub = commands.add_parser("keep", parents=[common],
                              help="keep replicas that give no completion out of the router")
    sub.add_argument("--interval", type=float, default=2.0, help="seconds between probe rounds")
    sub.add_argument("--timeout", type=float, default=8.0, help="seconds one probe may take")
    sub.add_argument("--state", help="file that keeps the replicas the keeper took out across its restarts")
    sub.add_argument("--metrics-file", help="servekit_router_keeper_out, for node_exporter's textfiles")
    sub.set_defaults(func=keep)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["register", *argv]  # the router units written before `keep` existed
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
