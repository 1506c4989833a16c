"""The head's API proxy, for real: nginx runs the config the role renders, on loopback.

The role's own template (templates/api-proxy.conf.j2) and TLS tasks
(roles/vllm/tasks/tls.yml, openssl on the control node) run through
ansible-playbook on localhost; then nginx serves that config on free
loopback ports in front of a stand-in for vLLM (a stdlib HTTP server that
counts what reaches it), and the tests check what a client gets: 429 beyond
the per-client rate and burst, 413 above the body cap, only /v1/ passed,
HTTPS verified with servekit's CA and refused without it.

Needs nginx (Debian's ``nginx`` package, or ``$SERVEKIT_NGINX`` naming the binary);
skipped, and says so, where there is none. The TLS tasks write files owned
by root, as on a node, so those tests need root.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play

NGINX = os.environ.get("SERVEKIT_NGINX") or shutil.which("nginx") or (
    "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="no nginx here (apt-get install nginx, or set $SERVEKIT_NGINX)")
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="the TLS tasks install root-owned files, as on a node")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Backend(ThreadingHTTPServer):
    """Stands in for vLLM on vllm_backend_port: counts the requests that reach it."""

    daemon_threads = True

    def __init__(self, port: int):
        self.seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sent = self.rfile.read(length)
                server.seen.append(self.path)
                body = json.dumps({"object": "list", "data": [{"id": "lab-tiny"}]}).encode()
                status = 200
                if sent.startswith(b"{") and json.loads(sent).get("model") not in (None, "lab-tiny"):
                    # vLLM 0.32's answer (entrypoints/openai/serving_engine.py _check_model),
                    # as the lab's replica gave it through the router
                    asked = json.loads(sent)["model"]
                    status, body = 404, json.dumps({"error": {
                        "message": f"The model `{asked}` does not exist. Valid aliases: lab-tiny.",
                        "type": "NotFoundError", "param": "model", "code": 404}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        server = self
        super().__init__(("127.0.0.1", port), Handler)


def render(tmp: Path, *flags: str, **overrides) -> Path:
    """The proxy config as the role renders it (and, with TLS, the role's certificate tasks);
    ``flags`` go to ansible-playbook (e.g. ``--check``)."""
    values = {"vllm_api_host": "127.0.0.1", "cluster_api_port": _free_port(),
              "vllm_backend_port": _free_port(), "cluster_api_tls": False,
              "vllm_api_proxy_config": str(tmp / "etc" / "api-proxy.conf"),
              "__vllm_tls_local_dir": str(tmp / "control" / "tls"),
              "cluster_metrics_textfile_dir": str(tmp / "textfile"),
              "__vllm_metrics_allow": ["127.0.0.1"], **overrides}
    (tmp / "etc").mkdir(parents=True, exist_ok=True)
    inventory = tmp / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"head": {"hosts": {"api-head": {
        "ansible_host": "127.0.0.1", "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable}}}}}}))
    (tmp / "vars.json").write_text(json.dumps(values))
    tasks = [
        {"ansible.builtin.import_tasks": str(ROOT / "roles/vllm/tasks/tls.yml"),
         "when": "cluster_api_tls"},
        {"name": "Render the proxy config", "ansible.builtin.template": {
            "src": str(ROOT / "roles/vllm/templates/api-proxy.conf.j2"),
            "dest": "{{ vllm_api_proxy_config }}",
            "mode": "0644"}},
    ]
    play = [{"hosts": "head", "gather_facts": False, "vars": {"vllm_watchdog": True},
             "vars_files": [str(ROOT / f"roles/{role}/{kind}/main.yml")
                            for role, kind in (("cluster", "defaults"), ("vllm", "defaults"),
                                               ("vllm", "vars"))],
             "tasks": tasks}]
    proc = ansible_playbook("-i", inventory, write_play(tmp / "play.yml", play),
                            "-e", f"@{tmp / 'vars.json'}", *flags, env={"ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (tmp / "last-run.txt").write_text(proc.stdout)
    return Path(values["vllm_api_proxy_config"])


def _runnable(config: Path, tmp: Path) -> Path:
    """The rendered config with its pid file and nginx's scratch dirs under ``tmp`` (nothing else changes)."""
    scratch = "".join(f"    {kind}_temp_path {tmp / kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = config.read_text().replace("pid /run/servekit-api-proxy.pid;", f"pid {tmp / 'nginx.pid'};")
    text = text.replace("http {\n", "http {\n" + scratch, 1)
    runnable = tmp / "nginx-test.conf"
    runnable.write_text(text)
    return runnable


def nginx_check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-q", "-e", "stderr", "-c", str(config)],
                          capture_output=True, text=True, check=False, timeout=30)


class _Proxy:
    def __init__(self, tmp: Path, config: Path):
        self.tmp = tmp
        values = json.loads((tmp / "vars.json").read_text())
        self.port, self.backend_port = values["cluster_api_port"], values["vllm_backend_port"]
        self.backend = _Backend(self.backend_port)
        threading.Thread(target=self.backend.serve_forever, daemon=True).start()
        user = "user root;" if os.geteuid() == 0 else ""
        self.proc = subprocess.Popen([NGINX, "-e", "stderr", "-c", str(_runnable(config, tmp)),
                                      "-g", f"daemon off; {user}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"nginx did not start: {self.proc.stdout.read()}")
                time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None,
                context: ssl.SSLContext | None = None) -> int:
        if context is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            return conn.getresponse().status
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.backend.shutdown()
        self.backend.server_close()


@pytest.fixture
def proxy(tmp_path, request):
    started: list[_Proxy] = []

    def start(**overrides) -> _Proxy:
        config = render(tmp_path, **overrides)
        assert nginx_check(_runnable(config, tmp_path)).returncode == 0
        started.append(_Proxy(tmp_path, config))
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_rendered_config_passes_nginx_t(tmp_path, tls):
    if tls and os.geteuid() != 0:
        pytest.skip("the TLS tasks install root-owned files, as on a node")
    config = render(tmp_path, cluster_api_tls=tls)
    proc = nginx_check(_runnable(config, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert ("ssl_certificate " in config.read_text()) == tls


def test_only_v1_reaches_vllm_and_metrics_only_from_allowed_addresses(proxy):
    api = proxy()
    assert api.request("GET", "/v1/models") == 200
    assert api.request("POST", "/tokenize", b"{}") == 404
    assert api.request("GET", "/metrics") == 200  # 127.0.0.1 is allowed
    assert api.backend.seen == ["/v1/models", "/metrics"]


def test_a_client_beyond_rate_and_burst_gets_429_and_vllm_never_sees_it(proxy):
    api = proxy(vllm_api_proxy_rate_limit=1, vllm_api_proxy_rate_burst=2)
    codes = [api.request("GET", "/v1/models") for _ in range(12)]
    assert codes[:3] == [200, 200, 200], codes  # one at the rate, two of burst
    assert codes.count(429) >= 8, codes
    assert len(api.backend.seen) == codes.count(200)


def test_no_rate_limit_when_set_to_zero(proxy):
    api = proxy(vllm_api_proxy_rate_limit=0)
    assert [api.request("GET", "/v1/models") for _ in range(30)] == [200] * 30


def test_a_body_above_the_cap_gets_413_before_vllm(proxy):
    api = proxy(vllm_api_proxy_max_body_mb=1)
    assert api.request("POST", "/v1/completions", b"x" * (2 << 20)) == 413
    assert api.backend.seen == []
    assert api.request("POST", "/v1/completions", b"x" * (512 << 10)) == 200
    assert api.backend.seen == ["/v1/completions"]


@ROOT_ONLY
def test_https_with_servekits_ca_verifies_and_an_unknown_ca_is_refused(proxy, tmp_path):
    api = proxy(cluster_api_tls=True)
    ca = tmp_path / "control" / "tls" / "ca.crt"
    assert api.request("GET", "/v1/models", context=ssl.create_default_context(cafile=str(ca))) == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        api.request("GET", "/v1/models", context=ssl.create_default_context())
    key = tmp_path / "etc" / "api-tls.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "control" / "tls" / "ca.key").stat().st_mode & 0o077 == 0


@ROOT_ONLY
def test_the_ca_is_made_once_and_a_second_run_changes_nothing(tmp_path):
    port, backend = _free_port(), _free_port()
    fixed = {"cluster_api_port": port, "vllm_backend_port": backend, "cluster_api_tls": True}
    render(tmp_path, **fixed)
    ca = (tmp_path / "control" / "tls" / "ca.crt").read_bytes()
    render(tmp_path, **fixed)
    assert (tmp_path / "control" / "tls" / "ca.crt").read_bytes() == ca
    assert "changed=0" in (tmp_path / "last-run.txt").read_text()


@ROOT_ONLY
def test_a_certificate_from_the_inventory_is_used_as_is(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(own / "k.pem"), "-out", str(own / "c.pem"), "-days", "1",
                    "-subj", "/CN=own", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    config = render(tmp_path, cluster_api_tls=True, cluster_api_tls_cert=(own / "c.pem").read_text(),
                    cluster_api_tls_key=(own / "k.pem").read_text())
    assert (tmp_path / "etc" / "api-tls.crt").read_text() == (own / "c.pem").read_text()
    assert not (tmp_path / "control" / "tls").exists(), "no CA when the inventory brings a certificate"
    assert nginx_check(_runnable(config, tmp_path)).returncode == 0


def test_replica_engines_an_unknown_model_gets_404_naming_every_deployment(proxy):
    """With replica engines the router hands a model no deployment serves to some
    replica, whose vLLM names only its own model; the edge names them all."""
    port = _free_port()
    models = [{"id": name, "object": "model", "created": 0, "owned_by": "servekit"}
              for name in ("lab-tiny", "lab-tiny-b", "it's/odd")]
    api = proxy(__vllm_single=False, vllm_backend_port=port, vllm_router_port=port,
                __vllm_router_workers=[{"url": f"http://127.0.0.1:{port}", "model_id": "lab-tiny"}],
                __vllm_models_data=models)

    def post(model: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        try:
            conn.request("POST", "/v1/completions", body=json.dumps({"model": model, "prompt": "x"}),
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()

    status, reply = post("no-such-model")
    assert status == 404, reply
    assert reply["error"]["code"] == 404 and reply["error"]["param"] == "model", reply
    assert "lab-tiny, lab-tiny-b, it's/odd" in reply["error"]["message"], reply
    assert post("lab-tiny") == (200, {"object": "list", "data": [{"id": "lab-tiny"}]})
    assert api.backend.seen == ["/v1/completions", "/v1/completions"]
