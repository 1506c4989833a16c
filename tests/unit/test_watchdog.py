"""The vLLM readiness watchdog: its restart rule, its probe and the workers' wait for the head.

The probe runs here against a loopback HTTP server that answers like vLLM's
API does in the cases the watchdog must tell apart (serving, 401, engine
dead with 500, a model list without models); the lab CI run proves it
against the real engine (.ci/recovery-check).
"""

import importlib.util
import json
import socket
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import ROOT, JsonHandler

FIXTURES = Path(__file__).parent.parent / "fixtures"
# The file the vllm role installs on the nodes, tested as it is deployed.
WATCHDOG = ROOT / "roles" / "vllm" / "files" / "watchdog.py"
_spec = importlib.util.spec_from_file_location("servekit_vllm_watchdog", WATCHDOG)
watchdog = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = watchdog  # dataclasses resolve their module by name
_spec.loader.exec_module(watchdog)


@pytest.mark.parametrize(
    ("served", "failures", "uptime", "expected"),
    [
        (True, 2, 500.0, watchdog.Decision(False, 0)),   # serving: the count starts over
        (False, 2, None, watchdog.Decision(False, 0)),   # unit not active: systemd's business
        (False, 0, 500.0, watchdog.Decision(False, 1)),  # first failure: count it
        (False, 2, 500.0, watchdog.Decision(True, 0)),   # third in a row, past the grace: restart
        (False, 2, 100.0, watchdog.Decision(False, 3)),  # still loading: never act
        (False, 7, 100.0, watchdog.Decision(False, 8)),
        (False, 7, 300.0, watchdog.Decision(True, 0)),   # grace over with the count long past the limit
    ],
)
def test_restart_rule(served, failures, uptime, expected):
    assert watchdog.decide(served, failures, uptime, grace=180, limit=3) == expected


def test_a_busy_engine_is_not_restarted():
    """No completion in time, but tokens were generated since the last look: busy, not dead."""
    busy = watchdog.decide(False, 2, 500.0, grace=180, limit=3, progressed=True)
    assert busy == watchdog.Decision(False, 0)


def test_restarts_are_bounded_per_window():
    assert watchdog.allowed_restart([], 100.0, limit=2, window=3600)
    assert watchdog.allowed_restart([0.0], 100.0, limit=2, window=3600)
    assert not watchdog.allowed_restart([0.0, 50.0], 100.0, limit=2, window=3600)
    # restarts older than the window no longer count
    assert watchdog.allowed_restart([0.0, 50.0], 3620.0, limit=2, window=3600)


def test_progress_counter_from_real_vllm_metrics():
    text = (FIXTURES / "lab/vllm-metrics.txt").read_text()
    assert watchdog.generated_tokens(text) == 3.0
    # two engines (data parallel): the counter is summed over label sets
    doubled = text + 'vllm:generation_tokens_total{engine="1",model_name="lab-tiny"} 4.0\n'
    assert watchdog.generated_tokens(doubled) == 7.0
    # the _created sample and other metrics sharing the prefix are not the counter
    assert watchdog.generated_tokens("vllm:generation_tokens_total_created 1.7e9\n") is None
    assert watchdog.generated_tokens("") is None


class _FakeVllm(JsonHandler):
    mode = "serving"
    seen_auth: ClassVar[list] = []


    def do_GET(self):
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != "Bearer sk-test":
            return self._send(401, {"error": "Unauthorized"})
        models = [] if self.mode == "no-models" else [{"id": "lab-tiny"}]
        return self._send(200, {"data": models})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["model"] == "lab-tiny" and body["max_tokens"] == 1
        if self.mode == "dead":
            return self._send(500, {"error": "EngineDeadError"})
        return self._send(200, {"choices": [{"text": "x"}]})


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeVllm.seen_auth = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_probe_needs_a_completion(api):
    _FakeVllm.mode = "serving"
    assert watchdog.probe(api, "sk-test", 5) == (True, "")
    assert _FakeVllm.seen_auth == ["Bearer sk-test"]


@pytest.mark.parametrize(
    ("mode", "key", "why"),
    [
        ("serving", "wrong", "HTTP 401"),
        ("dead", "sk-test", "HTTP 500"),
        ("no-models", "sk-test", "/v1/models lists no model"),
    ],
)
def test_probe_failures_say_why(api, mode, key, why):
    _FakeVllm.mode = mode
    served, reason = watchdog.probe(api, key, 5)
    assert not served
    assert why in reason


def test_probe_of_a_closed_port_fails():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served, reason = watchdog.probe(f"http://127.0.0.1:{port}", None, 2)
    assert not served and "refused" in reason.lower()


def test_probe_refuses_other_schemes():
    served, reason = watchdog.probe("file:///etc", None, 2)
    assert not served and "not an http(s) URL" in reason


def test_wait_head_returns_once_the_port_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert watchdog.main(["wait-head", "--host", "127.0.0.1", "--port", str(port), "--timeout", "5"]) == 0


def test_wait_head_gives_up_after_its_timeout():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        assert watchdog.main(["wait-head", "--host", "127.0.0.1", "--port", str(port), "--timeout", "1"]) == 1
