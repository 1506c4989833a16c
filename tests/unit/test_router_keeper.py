"""The head's rotation keeper (roles/vllm/files/router_workers.py keep): its rule, its probe,
and its rounds against a loopback router and engines that answer like vllm-router 0.1.17
(GET/POST/DELETE /workers in --enable-igw mode) and vLLM's /v1/completions do.

Why it exists: a replica whose Ray rank died keeps answering 200 on /health under
vLLM 0.32 while every completion hangs (docs/serving.md), and the router asks only
/health. tests/unit/test_router_keeper_live.py runs the same against the real router.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer
from typing import ClassVar

import pytest
from helpers import ROOT, JsonHandler

# The file the vllm role installs on the head, tested as it is deployed.
_spec = importlib.util.spec_from_file_location(
    "servekit_router_workers", ROOT / "roles" / "vllm" / "files" / "router_workers.py")
keeper_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = keeper_mod  # dataclasses resolve their module by name
_spec.loader.exec_module(keeper_mod)
Registered, Action, decide = keeper_mod.Registered, keeper_mod.Action, keeper_mod.decide

A, B, C = "http://10.0.0.1:8100", "http://10.0.0.2:8100", "http://10.0.0.1:8101"


@pytest.mark.parametrize(
    ("served", "registered", "removed", "failing", "kind"),
    [
        # no completion, another healthy replica of the deployment in the router: take it out
        (False, [(A, "m", True), (B, "m", True)], set(), {A}, "remove"),
        # ... even when the router still calls it healthy, or already calls it unhealthy
        (False, [(A, "m", False), (B, "m", True)], set(), {A}, "remove"),
        # no completion and no other healthy replica: never empty a deployment, only say so
        (False, [(A, "m", True)], set(), {A}, "hold"),
        (False, [(A, "m", True), (B, "m", False)], set(), {A}, "hold"),
        # the other replica is healthy to the router but gave no completion either
        (False, [(A, "m", True), (B, "m", True)], set(), {A, B}, "hold"),
        # another deployment's healthy replica does not count
        (False, [(A, "m", True), (C, "other", True)], set(), {A}, "hold"),
        # a replica that is not in the router (the roll took it out, or the keeper did): left alone
        (False, [(B, "m", True)], set(), {A}, "none"),
        (False, [(B, "m", True)], {A}, {A}, "none"),
        # the keeper took it out and it answers again: put it back
        (True, [(B, "m", True)], {A}, set(), "add"),
        # ... but someone else (the roll, a play) already put it back: only forget it
        (True, [(A, "m", True), (B, "m", True)], {A}, set(), "forget"),
        # someone else took it out (the roll restarts it): never put back by the keeper
        (True, [(B, "m", True)], set(), set(), "none"),
        # serving and in the router: nothing to do
        (True, [(A, "m", True), (B, "m", True)], set(), set(), "none"),
        # back in the router (a router restart registers all) but still no completion: out again
        (False, [(A, "m", True), (B, "m", True)], {A}, {A}, "remove"),
    ],
)
def test_the_keepers_rule(served, registered, removed, failing, kind):
    action = decide({"url": A, "model_id": "m"}, served, [Registered(*w) for w in registered],
                    removed=removed, failing=failing)
    assert isinstance(action, Action) and action.kind == kind, action


# --------------------------------------------------------------------------
# loopback stand-ins: replica engines and the router
# --------------------------------------------------------------------------


class _Engine(JsonHandler):
    """vLLM's completion endpoint and /metrics; ``mode`` per port: serving, hang, busy (hangs too,
    but its vllm:generation_tokens_total grows, as a saturated engine's does), dead (500) or key (401)."""

    modes: ClassVar[dict[int, str]] = {}
    generated: ClassVar[dict[int, int]] = {}
    bodies: ClassVar[list] = []
    auth: ClassVar[list] = []


    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/metrics" and self.modes.get(port) == "busy":
            type(self).generated[port] = self.generated.get(port, 0) + 7
            text = f'vllm:generation_tokens_total{{model_name="m"}} {self.generated[port]}.0\n'.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        self._send(200, {})  # /health says 200 whatever the engine does; /metrics: no counters

    def do_POST(self):
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        type(self).auth.append(self.headers.get("Authorization"))
        mode = self.modes.get(self.server.server_address[1], "serving")
        if mode in ("hang", "busy"):
            time.sleep(3)
            return None
        if mode == "dead":
            return self._send(500, {"error": "EngineDeadError"})
        if mode == "key":
            return self._send(401, {"error": "Unauthorized"})
        return self._send(200, {"choices": [{"text": "x"}]})


class _Router(JsonHandler):
    """vllm-router's worker API (--enable-igw), with its GET /workers fields (tests/unit/test_day2.py)."""

    workers: ClassVar[dict[str, str]] = {}
    calls: ClassVar[list] = []


    def do_GET(self):
        self._send(200, {"workers": [{"id": url, "url": url, "model_id": model, "is_healthy": True,
                                      "metadata": {"model_id": model}}
                                     for url, model in self.workers.items()],
                         "total": len(self.workers)})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", body["url"]))
        self.workers[body["url"]] = body["model_id"]
        self._send(200, {"status": "ok"})

    def do_DELETE(self):
        url = urllib.parse.unquote(self.path.removeprefix("/workers/"))
        self.calls.append(("DELETE", url))
        self._send(200, {}) if self.workers.pop(url, None) else self._send(404, {})


def _serve(handler) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def cluster(tmp_path):
    """Two replica engines of deployment m and one of deployment solo, all in the router."""
    servers = [_serve(_Engine) for _ in range(3)]
    router, router_url = _serve(_Router)
    urls = [url for _, url in servers]
    workers = [{"url": urls[0], "model_id": "m"}, {"url": urls[1], "model_id": "m"},
               {"url": urls[2], "model_id": "solo"}]
    (tmp_path / "router-workers.json").write_text(json.dumps(workers))
    _Engine.modes, _Engine.bodies, _Engine.auth, _Engine.generated = {}, [], [], {}
    _Router.workers = {w["url"]: w["model_id"] for w in workers}
    _Router.calls = []
    yield router_url, urls, tmp_path
    for server, _ in [*servers, (router, "")]:
        server.shutdown()
        server.server_close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_hanging_replica_goes_out_and_comes_back_when_it_answers(cluster, monkeypatch, capsys):
    router, urls, tmp = cluster
    monkeypatch.setenv("VLLM_API_KEY", "sk-test")
    keeper = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, str(tmp / "removed.json"))
    _Engine.modes[_port(urls[0])] = "hang"
    keeper.round()
    assert urls[0] not in _Router.workers and urls[1] in _Router.workers
    assert json.loads((tmp / "removed.json").read_text()) == [urls[0]]
    assert {"model": "m", "prompt": "ping", "max_tokens": 1, "temperature": 0} in _Engine.bodies
    assert set(_Engine.auth) == {"Bearer sk-test"}
    keeper.round()  # still hanging: it stays out, nothing else happens
    assert _Router.calls == [("DELETE", urls[0])]
    _Engine.modes[_port(urls[0])] = "serving"
    keeper.round()
    assert _Router.calls[-1] == ("POST", urls[0]) and urls[0] in _Router.workers
    assert json.loads((tmp / "removed.json").read_text()) == []
    out = capsys.readouterr().out.splitlines()
    assert f"deployment m replica {urls[0]}: taken out of the router" in out[0], out
    assert "TimeoutError" in out[0] or "timed out" in out[0], out
    assert out[1].startswith(f"deployment m replica {urls[0]}: put back in the router: serving again"), out
    assert "sk-test" not in "".join(out)


def test_the_replicas_held_out_are_a_metric_for_the_alert(cluster):
    """The router's vllm_router_worker_health keeps a removed worker's last value (1, seen on the
    lab 2026-12-08), so ReplicaOutOfRotation reads servekit_router_keeper_out."""
    router, urls, tmp = cluster
    prom = tmp / "textfile" / "servekit-router-keeper.prom"
    keeper = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, None, str(prom))
    keeper.round()
    assert f'servekit_router_keeper_out{{worker="{urls[0]}"}} 0' in prom.read_text()
    _Engine.modes[_port(urls[0])] = "hang"
    keeper.round()
    lines = [line for line in prom.read_text().splitlines() if not line.startswith("#")]
    assert lines == [f'servekit_router_keeper_out{{worker="{urls[0]}"}} 1',
                     f'servekit_router_keeper_out{{worker="{urls[1]}"}} 0',
                     f'servekit_router_keeper_out{{worker="{urls[2]}"}} 0']
    assert oct(prom.stat().st_mode & 0o777) == "0o644"


def test_a_busy_replica_is_not_taken_out(cluster, capsys):
    """A saturated engine queues the probe past its timeout, but it generates tokens meanwhile: it
    stays in, from the first round on."""
    router, urls, tmp = cluster
    keeper = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, None)
    _Engine.modes[_port(urls[0])] = "busy"
    keeper.round()
    keeper.round()
    assert _Router.calls == [] and urls[0] in _Router.workers
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "generated tokens while the probe waited: busy, not dead" in out[0], out


def test_a_deployments_last_replica_stays_and_is_named_once(cluster, capsys):
    router, urls, tmp = cluster
    keeper = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, None)
    _Engine.modes[_port(urls[2])] = "dead"
    keeper.round()
    keeper.round()
    assert urls[2] in _Router.workers and _Router.calls == []
    out = capsys.readouterr().out.splitlines()
    assert out == [f"deployment solo replica {urls[2]}: left in the router: no completion, but no other "
                   "healthy replica of its deployment is in (HTTP 500)"]


def test_a_replica_someone_else_took_out_is_not_put_back(cluster):
    router, urls, tmp = cluster
    del _Router.workers[urls[1]]  # the roll took it out to restart it
    keeper = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, None)
    keeper.round()
    _Engine.modes[_port(urls[1])] = "dead"
    keeper.round()
    assert _Router.calls == [] and urls[1] not in _Router.workers


def test_a_refused_key_says_nothing_of_the_engine(cluster, capsys):
    router, urls, tmp = cluster
    keeper = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, None)
    _Engine.modes[_port(urls[0])] = "key"
    keeper.round()
    assert _Router.calls == []
    assert "probe inconclusive" in capsys.readouterr().out


def test_a_restarted_keeper_still_puts_back_what_it_took_out(cluster):
    router, urls, tmp = cluster
    state = tmp / "removed.json"
    first = keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, str(state))
    _Engine.modes[_port(urls[1])] = "dead"
    first.round()
    assert urls[1] not in _Router.workers
    _Engine.modes[_port(urls[1])] = "serving"
    keeper_mod.Keeper(router, str(tmp / "router-workers.json"), 1.0, str(state)).round()
    assert urls[1] in _Router.workers


def test_probe_of_a_closed_port_fails():
    served, why = keeper_mod.probe("http://127.0.0.1:9", "m", None, 2)
    assert served is False and "refused" in why.lower()


def test_register_stays_the_default_mode(cluster, capsys):
    """The router unit's ExecStartPost: no subcommand registers every replica, as before `keep`."""
    router, urls, tmp = cluster
    _Router.workers = {}
    options = ["--router", router, "--workers", str(tmp / "router-workers.json")]
    assert keeper_mod.main(options) == 0
    assert list(_Router.workers) == urls
    assert keeper_mod.main(["register", *options]) == 0
    args = keeper_mod.build_parser().parse_args(["keep", "--router", router, "--workers", "w.json"])
    assert (args.func, args.interval, args.timeout, args.state) == (keeper_mod.keep, 2.0, 8.0, None)
