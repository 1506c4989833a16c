"""Cluster checks for any inventory: data network, limits, Ray, vLLM units and the API.

They run on every node of the inventory (head and workers); checks that
belong to the head skip themselves on workers and say so.
"""

from __future__ import annotations

import json
import shlex

import pytest
from servekit.module_utils.node_gpu import GPU_QUERY, parse_gpu_query
from servekit.module_utils.node_nccl import engine_transport_problems, parse_nccl_channels
from servekit.module_utils.node_preflight import parse_proc_limits

VLLM_UNIT = "servekit-vllm.service"
RAY_UNIT = "servekit-ray.service"
JUMBO_PAYLOAD = 9000 - 28  # MTU minus IPv4 and ICMP headers


def _data_interface(host, address: str) -> str:
    for line in host.check_output("ip -o -4 addr show").splitlines():
        fields = line.split()
        if fields[3].split("/")[0] == address:
            return fields[1]
    raise AssertionError(f"no interface holds the data address {address}: run --tags network")


def test_data_interface_mtu_9000(host, node):
    iface = _data_interface(host, node["address"])
    mtu = host.file(f"/sys/class/net/{iface}/mtu").content_string.strip()
    assert mtu == "9000", f"{iface} MTU is {mtu}: run --tags network"


def test_jumbo_frames_reach_every_other_node(host, node, cluster):
    others = {name: info["address"] for name, info in cluster.items() if name != node["name"]}
    if not others:
        pytest.skip("single-node inventory: no peer to ping")
    for name, address in sorted(others.items()):
        cmd = host.run(f"ping -M do -s {JUMBO_PAYLOAD} -c 2 -W 2 {shlex.quote(address)}")
        assert cmd.rc == 0, (
            f"{node['name']} -> {name} ({address}): {JUMBO_PAYLOAD}-byte unfragmented ping failed "
            f"({cmd.stdout.strip().splitlines()[-1] if cmd.stdout.strip() else cmd.stderr.strip()}); "
            "check the MTU on both ends and on every switch port")


def _pids(host, unit: str) -> list[int]:
    """The unit's main process and all its descendants (cgroup layouts differ between hosts)."""
    main = int(host.check_output(f"systemctl show -P MainPID {unit}"))
    if main == 0:
        return []
    children: dict[int, list[int]] = {}
    for line in host.check_output("ps -e -o pid=,ppid=").splitlines():
        pid, ppid = (int(x) for x in line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [main]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _skip_without_vllm_unit(node, unit: str) -> None:
    """With the Ray executor only the head runs a vLLM unit: worker ranks are Ray actors."""
    if unit == VLLM_UNIT and node["rank"] > 0 and node["vars"]["cluster_executor"] == "ray":
        pytest.skip("ray executor: this node's vLLM rank is a Ray actor under servekit-ray, not a unit")


def _memlock_ceiling(host) -> str:
    return parse_proc_limits(host.file("/proc/1/limits").content_string)["Max locked memory"]["hard"]


@pytest.mark.parametrize("unit", [RAY_UNIT, VLLM_UNIT])
def test_units_configure_unlimited_memlock(host, node, unit):
    _skip_without_vllm_unit(node, unit)
    value = host.check_output(f"systemctl show -P LimitMEMLOCK {unit}")
    assert value == "infinity", f"{unit} has LimitMEMLOCK={value}: the unit must set LimitMEMLOCK=infinity"


@pytest.mark.parametrize("unit", [RAY_UNIT, VLLM_UNIT])
def test_running_processes_get_the_node_memlock_ceiling(host, node, unit):
    """Unlimited on real hosts; in a container that caps it (the lab: 8 MiB), the cap itself."""
    _skip_without_vllm_unit(node, unit)
    pids = _pids(host, unit)
    assert pids, f"{unit} runs no process on this node"
    ceiling = _memlock_ceiling(host)
    for pid in pids:
        limits = host.file(f"/proc/{pid}/limits")
        if not limits.exists:  # exited between the listing and the read
            continue
        entry = parse_proc_limits(limits.content_string)["Max locked memory"]
        assert entry["soft"] == entry["hard"] == ceiling, (
            f"{unit} PID {pid} locked memory {entry}, the node allows {ceiling}")


def test_cluster_env_in_serving_processes(host, node):
    for unit in (RAY_UNIT, VLLM_UNIT):
        if unit == VLLM_UNIT and node["rank"] > 0 and node["vars"]["cluster_executor"] == "ray":
            continue  # the rank is a Ray actor: test_ray_ranks_keep_this_nodes_settings
        main_pid = host.check_output(f"systemctl show -P MainPID {unit}")
        assert main_pid != "0", f"{unit} is not running"
        environ = host.file(f"/proc/{main_pid}/environ").content.split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        assert env.get("VLLM_HOST_IP") == node["address"], f"{unit}: VLLM_HOST_IP={env.get('VLLM_HOST_IP')}"
        assert env.get("GLOO_SOCKET_IFNAME") == _data_interface(host, node["address"]), (
            f"{unit}: GLOO_SOCKET_IFNAME={env.get('GLOO_SOCKET_IFNAME')}, not the data interface")


def test_vllm_unit_runs_with_this_node_rank(host, node, cluster):
    _skip_without_vllm_unit(node, VLLM_UNIT)
    assert host.service(VLLM_UNIT.removesuffix(".service")).is_running, f"{VLLM_UNIT} is not active"
    argv = host.check_output(f"systemctl show -P ExecStart {VLLM_UNIT}")
    executor = node["vars"]["cluster_executor"]
    if executor == "mp" and len(cluster) > 1:
        rank = node["rank"]
        assert f"--node-rank {rank} " in argv + " ", f"{VLLM_UNIT} argv lacks --node-rank {rank}"
        assert ("--headless" in argv) == (node["rank"] > 0), "only the head (rank 0) serves the API"


# What must be this node's own in every vLLM rank it holds. vLLM's Ray
# executor fills a rank's environment from the head driver's: v2 (vLLM 0.32's
# default) with setdefault, so a name the node lacks takes the head's value;
# v1 overwrites NCCL_*/VLLM_* with the head's and logs "Overwriting environment
# variable" (vllm/utils/system_utils.py). /proc/PID/environ shows what the
# raylet started the rank with (so what setdefault keeps); the rank's own Ray
# log shows whether vLLM overwrote any of them afterwards.
PER_NODE_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX",
                 "VLLM_HOST_IP")
# vLLM's Ray actors: RayWorkerProc (v2, vllm/v1/executor/ray_executor_v2.py),
# RayWorkerWrapper (v1, vllm/v1/executor/ray_executor.py).
RAY_RANK_TITLES = ("ray::RayWorkerProc", "ray::RayWorkerWrapper")


def _environ(host, pid: int) -> dict[str, str] | None:
    environ = host.file(f"/proc/{pid}/environ")
    if not environ.exists:
        return None
    return dict(item.decode().split("=", 1) for item in environ.content.split(b"\0") if b"=" in item)


def _in_container(node) -> bool:
    """Whether Ray and vLLM run in the node's container (the contract's cluster_exec_prefix)."""
    return bool(node["vars"]["cluster_exec_prefix"])


def _container_exec(node, *argv: str, env: dict[str, str] | None = None) -> str:
    """A command line run inside the node's Ray container (the container runtime)."""
    prefix = node["vars"]["cluster_exec_prefix"]
    flags = [f"--env={name}={value}" for name, value in (env or {}).items()]
    return shlex.join([*prefix[:-1], *flags, *prefix[-1:], *argv])


def _ray_rank_pids(host, node) -> list[int]:
    """vLLM's Ray actors on this node: under servekit-ray (native), or anywhere
    on the node under the container runtime (the engine's conmon parents them,
    outside the unit's process tree)."""
    ray_pids = None if _in_container(node) else set(_pids(host, RAY_UNIT))
    ranks = []
    for line in host.check_output("ps -e -o pid=,args=").splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.startswith(RAY_RANK_TITLES) and (ray_pids is None or int(pid) in ray_pids):
            ranks.append(int(pid))
    return ranks


def _ray_worker_logs(host, node, pid: int) -> str:
    """The rank's Ray worker logs (worker-*-PID.out/.err under /tmp/ray), read in
    the container when there is one: there the file names carry the PID the
    container sees (the last NSpid of /proc/PID/status)."""
    inner = pid
    if _in_container(node):
        status = host.file(f"/proc/{pid}/status").content_string
        inner = int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])
    script = (f"cat /tmp/ray/session_latest/logs/worker-*-{inner}.out "
              f"/tmp/ray/session_latest/logs/worker-*-{inner}.err 2>/dev/null")
    return host.run(_container_exec(node, "sh", "-c", script) if _in_container(node) else script).stdout


def test_ray_ranks_keep_this_nodes_settings(host, node):
    if node["vars"]["cluster_executor"] != "ray":
        pytest.skip("mp executor: every rank is a vLLM unit (test_cluster_env_in_serving_processes)")
    ranks = _ray_rank_pids(host, node)
    if not ranks:
        pytest.skip(f"no vLLM rank ({', '.join(RAY_RANK_TITLES)}) under {RAY_UNIT} on this node")
    cluster_env = host.file(node["vars"]["cluster_env_file"]).content_string
    wanted = dict(line.split("=", 1) for line in cluster_env.splitlines()
                  if "=" in line and not line.startswith("#"))
    iface = _data_interface(host, node["address"])
    expected = {"NCCL_SOCKET_IFNAME": iface, "GLOO_SOCKET_IFNAME": iface, "VLLM_HOST_IP": node["address"]}
    expected |= {name: wanted[name] for name in ("NCCL_IB_HCA", "NCCL_IB_GID_INDEX") if name in wanted}
    for pid in ranks:
        env = _environ(host, pid)
        assert env is not None, f"rank PID {pid} exited during the check"
        wrong = {name: env.get(name) for name, value in expected.items() if env.get(name) != value}
        assert not wrong, (
            f"{node['name']}: vLLM rank PID {pid} has {wrong}, this node's own are "
            f"{ {name: expected[name] for name in wrong} } (set them in the Ray unit's environment: "
            "the head's values fill what a node lacks)")
        logs = _ray_worker_logs(host, node, pid)
        overwritten = sorted({name for name in PER_NODE_VARS
                              if f"Overwriting environment variable {name} " in logs})
        assert not overwritten, (
            f"{node['name']}: vLLM overwrote {overwritten} in rank PID {pid} with the head's values "
            "(v1 Ray executor): list them in vllm_ray_env_not_carried or pin vllm_ray_executor_version: 2")



def test_ray_ranks_use_rdma_transport(host, node, cluster):
    """Each vLLM rank's own NCCL channel lines, from its Ray worker log on this node (no driver
    forwarding, so no Ray log deduplication): NET/IB or a net plugin's IBext, never NET/Socket,
    and /GDRDMA unless this node's GPU cannot do GPUDirect RDMA (GB10, unified memory)."""
    node_vars = node["vars"]
    if not node_vars["cluster_rdma_enabled"]:
        pytest.skip("cluster_rdma_enabled is false: no RDMA transport to check (the lab's CPU vLLM "
                    "talks gloo, not NCCL)")
    if node_vars["cluster_executor"] != "ray":
        pytest.skip("mp executor: the vLLM stage's transport check reads every node's vLLM journal")
    if len(cluster) < 2:
        pytest.skip("single-node inventory: no NCCL channel crosses nodes")
    ranks = _ray_rank_pids(host, node)
    if not ranks:
        pytest.skip(f"no vLLM rank ({', '.join(RAY_RANK_TITLES)}) on this node")
    names = ({gpu["name"] for gpu in parse_gpu_query(host.check_output(shlex.join(GPU_QUERY)))}
             if host.exists("nvidia-smi") else set())
    expect_gdr = not any("GB10" in name.split() for name in names)
    for pid in ranks:
        text = _ray_worker_logs(host, node, pid)
        channels = parse_nccl_channels(text)
        assert channels, (
            f"{node['name']}: rank PID {pid} logged no NCCL channel line: the Ray workers need "
            "NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=INIT,NET (rdma_nccl_debug in the cluster env file)")
        hosts = {c["host"] for c in channels}
        problems = engine_transport_problems({node["name"]: text}, dict.fromkeys(hosts, expect_gdr))
        assert not problems, f"{node['name']}: rank PID {pid}: " + "; ".join(problems)

def test_ray_sees_every_node(host, node, cluster):
    if node["rank"] != 0:
        pytest.skip("checked from the head")
    script = (
        "import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False); "
        "print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))"
    )
    # the runtime's Python and Ray's auth environment, as the ray stage's probe uses them
    env = node["vars"]["cluster_ray_auth_env"]
    python = node["vars"]["cluster_python"]
    if _in_container(node):
        out = host.check_output(_container_exec(node, *python[len(node["vars"]["cluster_exec_prefix"]):],
                                                "-c", script, env=env))
    else:
        prefix = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        out = host.check_output(f"{prefix} {shlex.join(python)} -c {shlex.quote(script)}")
    alive = json.loads(out.splitlines()[-1])
    missing = {name: info["address"] for name, info in cluster.items() if info["address"] not in alive}
    assert not missing, f"Ray does not see {missing}; alive: {alive}"


def test_ray_refuses_job_submission_without_the_token(host, node):
    if node["rank"] != 0:
        pytest.skip("the job API runs on the head")
    if not node["vars"]["cluster_ray_auth"]:
        pytest.skip("the inventory turns Ray token authentication off")
    port = node["vars"]["ray_dashboard_port"]
    status, reply = _post(host, port, "/api/jobs/", {"entrypoint": "echo pwned"})
    assert status in (401, 403), f"job submission without a token answered {status}: {reply}"


def test_ray_token_is_root_only_and_never_on_a_command_line(host, node):
    if not node["vars"]["cluster_ray_auth"]:
        pytest.skip("the inventory turns Ray token authentication off")
    token_file = host.file(node["vars"]["cluster_ray_auth_token_file"])
    assert token_file.exists, f"{token_file.path} missing: run --tags ray"
    mode = token_file.mode
    assert token_file.user == "root" and mode == 0o600, f"{token_file.path} mode {oct(mode)}"
    token = token_file.content_string.strip()
    assert len(token) >= 32
    assert token not in host.check_output("ps -eo args"), "the Ray token shows in a process command line"


def _post(host, port: int, path: str, body: dict, api_key: str | None = None) -> tuple[int, dict]:
    """POST from the node itself; the key travels on stdin, never on a command line."""
    script = (
        "import json, sys, urllib.error, urllib.request\n"
        "req = json.load(sys.stdin)\n"
        "headers = {'Content-Type': 'application/json'}\n"
        "if req['key']: headers['Authorization'] = 'Bearer ' + req['key']\n"
        f"r = urllib.request.Request('http://127.0.0.1:{port}{path}', data=json.dumps(req['body']).encode(), "
        "headers=headers)\n"
        "try:\n"
        "    with urllib.request.urlopen(r, timeout=120) as resp: print(resp.status, resp.read().decode())\n"
        "except urllib.error.HTTPError as err: print(err.code, json.dumps({'error': err.read().decode()}))\n"
    )
    payload = json.dumps({"key": api_key, "body": body})
    cmd = host.run(f"python3 -c {shlex.quote(script)} <<'EOF'\n{payload}\nEOF")
    assert cmd.rc == 0, f"POST {path} failed: {cmd.stderr.strip().splitlines()[-1:]}"
    status, _, text = cmd.stdout.partition(" ")
    return int(status), json.loads(text)


def test_text_completion_on_the_head(host, node, model, api_key):
    if node["rank"] != 0:
        pytest.skip("the API runs on the head")
    status, reply = _post(host, node["api_port"], "/v1/completions",
                          {"model": model, "prompt": "The cluster", "max_tokens": 8, "temperature": 0},
                          api_key)
    assert status == 200, reply
    assert reply["choices"][0]["text"], f"empty completion: {reply}"
    assert reply["usage"]["completion_tokens"] > 0


def test_chat_completion_on_the_head(host, node, model, api_key):
    if node["rank"] != 0:
        pytest.skip("the API runs on the head")
    status, reply = _post(host, node["api_port"], "/v1/chat/completions",
                          {"model": model, "messages": [{"role": "user", "content": "Hello"}],
                           "max_tokens": 8}, api_key)
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] is not None, f"no message: {reply}"
    assert reply["usage"]["completion_tokens"] > 0


def test_api_refuses_requests_without_the_key(host, node, model, api_key):
    if node["rank"] != 0:
        pytest.skip("the API runs on the head")
    if not api_key:
        pytest.skip("the inventory sets no vllm_api_key: the API is open by configuration")
    body = {"model": model, "prompt": "x", "max_tokens": 1}
    assert _post(host, node["api_port"], "/v1/completions", body)[0] == 401
    assert _post(host, node["api_port"], "/v1/completions", body, api_key + "x")[0] == 401


@pytest.fixture(params=["vllm_api_key", "vllm_hf_token", "ray_auth_token"])
def secret(request, host, node) -> tuple[str, str]:
    """Each secret the cluster holds: (name, value)."""
    name = request.param
    if name == "ray_auth_token":
        if not node["vars"]["cluster_ray_auth"]:
            pytest.skip("the inventory turns Ray token authentication off")
        path = node["vars"]["cluster_ray_auth_token_file"]
        value = host.file(path).content_string.strip() if host.file(path).exists else None
    else:
        value = node["vars"][name]
    if not value:
        pytest.skip(f"the inventory sets no {name}")
    return name, value


def test_secrets_are_in_no_command_line_journal_or_readable_file(host, secret):
    name, value = secret
    assert value not in host.check_output("ps -eo args"), f"{name} shows in a process command line"
    journal = host.run("journalctl --no-pager -o cat").stdout
    assert value not in journal, f"{name} shows in the journal"
    # the value goes to grep on stdin: a pattern argument would put it in the process list
    grep = f"grep -rlsF -f - /etc /opt/servekit/bin /var/log /tmp <<'EOF'\n{value}\nEOF"
    leaks = host.run(grep).stdout.split()
    for path in leaks:
        mode = host.file(path).mode
        assert host.file(path).user == "root" and mode & 0o077 == 0, f"{path} holds {name}, mode {oct(mode)}"


# Routes vLLM serves without checking the key (it checks /v1, /v2, /inference,
# /cohere only); GET, so a misrouted probe cannot pause or change the engine.
UNGUARDED_ROUTES = ["/health", "/version", "/tokenize", "/pause", "/invocations", "/docs"]


def _get_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - http URL of the lab head
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def proxied_head(node) -> dict:
    """The head, when the API proxy is on (the role's default)."""
    if node["rank"] != 0:
        pytest.skip("the API runs on the head")
    if not node["vars"]["cluster_api_proxy"]:
        pytest.skip("the inventory turns the API proxy off (vLLM serves every route itself)")
    return node


def test_api_proxy_passes_only_the_keyed_routes(proxied_head):
    """From the control node: what the key does not cover answers 404 at the API port."""
    node = proxied_head
    base = f"http://{node['address']}:{node['api_port']}"
    answers = {route: _get_status(base + route) for route in UNGUARDED_ROUTES}
    assert answers == dict.fromkeys(UNGUARDED_ROUTES, 404), answers
    # the control node is not a cluster node nor a monitoring host
    assert _get_status(base + "/metrics") == 403
    assert _get_status(base + "/v1/models") == 401  # passed through, and vLLM wants the key


def test_vllm_itself_listens_on_loopback_only(host, proxied_head):
    """Behind the proxy vLLM binds 127.0.0.1, where its unguarded routes do answer."""
    port = proxied_head["vars"]["vllm_backend_port"]
    listeners = host.check_output(f"ss -Hltn 'sport = :{port}'").split("\n")
    local = {line.split()[3] for line in listeners if line.strip()}
    assert local == {f"127.0.0.1:{port}"}, f"vLLM listens on {local}"
    metrics = host.run(f"python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/metrics').status)\"")
    assert metrics.stdout.strip() == "200", "vLLM's /metrics (no key needed) should answer on loopback"


def test_api_reachable_from_the_control_node(node, model, api_key):
    """The OpenAI client on the machine running pytest, over the data network."""
    if node["rank"] != 0:
        pytest.skip("the API runs on the head")
    openai = pytest.importorskip("openai", reason="the openai client is not installed here")
    client = openai.OpenAI(base_url=f"http://{node['address']}:{node['api_port']}/v1",
                           api_key=api_key or "unused", timeout=120)
    served = [m.id for m in client.models.list()]
    assert model in served, f"the API serves {served}, not {model}"
    reply = client.chat.completions.create(model=model, max_tokens=8,
                                           messages=[{"role": "user", "content": "Say hi"}])
    assert reply.usage.completion_tokens > 0


def test_model_files_on_every_node_that_holds_a_rank(host, node, model):
    # Under the Ray executor only the head runs a vLLM unit, but Ray places
    # ranks on the workers and each loads its share of the weights from its
    # own disk: a local model (vllm_model_source) must be on those nodes too.
    from pathlib import Path

    from servekit.module_utils.vllm_registry import load_registry_file, select_model

    registry = Path(__file__).resolve().parents[2] / "config" / "model_registry.yml"
    entry = select_model(load_registry_file(str(registry)), model)
    path = str(entry.get("model", ""))
    if not path.startswith("/"):
        pytest.skip(f"model {model} comes from the hub ({path}): each rank downloads it")
    # Ray may place a rank on any node of the cluster; under mp the nodes
    # that hold one run a vLLM unit.
    if node["vars"].get("cluster_executor", "ray") != "ray" and not host.service(VLLM_UNIT).is_running:
        pytest.skip("mp executor: no vLLM unit, so no rank, on this node")
    for name in ("config.json", "model.safetensors"):
        assert host.file(f"{path}/{name}").exists, (
            f"{node['name']} may hold a vLLM rank but lacks {path}/{name}: the vllm stage copies "
            "vllm_model_source to every node that holds a rank (every node under Ray)")
