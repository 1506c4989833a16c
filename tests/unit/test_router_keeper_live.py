"""The rotation keeper against the real vllm-router 0.1.17 (the wheel the lab's wheelhouse holds).

Two loopback replica engines of one deployment, both answering 200 on /health; one
hangs on every completion, as a spanning replica with a dead Ray rank does under
vLLM 0.32. The router (as servekit runs it: --enable-igw, cache_aware, 6 retries)
keeps both in rotation; the keeper (`router_workers.py keep`, run as its unit runs
it) takes the hanging one out and puts it back once it answers. Slow: a fresh venv
from the wheelhouse (about 20 s). Skipped where the wheelhouse has no vllm-router.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import ROOT, JsonHandler, run

WHEELHOUSE = Path(os.environ.get("SERVEKIT_CACHE_DIR", "/var/cache/servekit")) / "wheelhouse"
ROUTER_WHEELS = sorted(WHEELHOUSE.glob("vllm_router-0.1.17-*.whl"))
SCRIPT = ROOT / "roles" / "vllm" / "files" / "router_workers.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ROUTER_WHEELS, reason=f"no vllm_router-0.1.17 wheel in {WHEELHOUSE}"),
]


class _Engine(JsonHandler):
    """A replica engine: /health always 200; completions answer, or hang while ``hang`` holds its port."""

    hang: ClassVar[set[int]] = set()
    released = threading.Event()


    def do_GET(self):
        self._send(200, {})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/completions":
            return self._send(404, {})
        if self.server.server_address[1] in self.hang:
            self.released.wait(60)  # a hung engine: no status, no bytes
            return None
        return self._send(200, {"id": "c", "object": "text_completion", "model": "m",
                                "choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until(check: Callable[[], bool], limit: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, f"not within {limit} s"
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def router_bin(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("router-venv")
    assert run([sys.executable, "-m", "venv", venv]).returncode == 0
    pip = run([venv / "bin/pip", "install", "-q", "--no-index", "--find-links", WHEELHOUSE,
               "vllm-router==0.1.17"], timeout=300)
    if pip.returncode != 0:
        pytest.skip(f"vllm-router's dependencies are not all in {WHEELHOUSE}: {pip.stderr[-500:]}")
    return venv / "bin/vllm-router"


@pytest.fixture
def engines():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Engine) for _ in range(2)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    _Engine.hang = set()
    _Engine.released.clear()
    yield [server.server_address[1] for server in servers]
    _Engine.released.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _workers(router: str) -> dict[str, bool]:
    with urllib.request.urlopen(f"{router}/workers", timeout=5) as response:  # noqa: S310 - loopback
        return {w["url"]: w["is_healthy"] for w in json.load(response)["workers"]}


def _complete(router: str) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{router}/v1/completions", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "m", "prompt": "the same prompt", "max_tokens": 1}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return response.status


def test_the_keeper_takes_a_hanging_replica_out_of_the_real_router_and_puts_it_back(
        router_bin, engines, tmp_path):
    port = _free_port()
    router = f"http://127.0.0.1:{port}"
    hanging, serving = (f"http://127.0.0.1:{p}" for p in engines)
    workers_file = tmp_path / "router-workers.json"
    workers_file.write_text(json.dumps([{"url": url, "model_id": "m"} for url in (hanging, serving)]))
    _Engine.hang = {engines[0]}
    log = (tmp_path / "router.log").open("w")
    procs = [subprocess.Popen(  # the router as roles/vllm/vars/main.yml's __vllm_router_args run it
        [router_bin, "--enable-igw", "--host", "127.0.0.1", "--port", str(port), "--policy", "cache_aware",
         "--health-check-interval-secs", "1", "--retry-max-retries", "6",
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(_free_port())],
        stdout=log, stderr=subprocess.STDOUT)]
    try:
        register = run([sys.executable, SCRIPT, "register", "--router", router, "--workers", workers_file],
                       timeout=90)
        assert register.returncode == 0, register.stdout + register.stderr
        _until(lambda: _workers(router) == {hanging: True, serving: True}, 15)  # /health says 200
        keeper = subprocess.Popen(
            [sys.executable, SCRIPT, "keep", "--router", router, "--workers", workers_file,
             "--interval", "1", "--timeout", "2", "--state", tmp_path / "removed.json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(keeper)
        out_after = _until(lambda: hanging not in _workers(router), 15)
        assert _workers(router) == {serving: True}
        assert json.loads((tmp_path / "removed.json").read_text()) == [hanging]
        for _ in range(3):  # what a client gets now: every completion, from the serving replica
            assert _complete(router) == 200
        _Engine.hang = set()
        back_after = _until(lambda: _workers(router).get(hanging) is not None, 15)
        assert set(_workers(router)) == {hanging, serving}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=10)
        log.close()
    lines = keeper.stdout.read().splitlines()
    said = f"deployment m replica {hanging}: "
    assert any(line.startswith(f"{said}taken out of the router") for line in lines), lines
    assert any(line.startswith(f"{said}put back in the router") for line in lines), lines
    assert not any(serving in line for line in lines), lines
    assert out_after < 10 and back_after < 10, (out_after, back_after)
