"""The overhead benchmark's by-hand start (servekit/bench/byhand.py) on units rendered by the real
vllm_launch code.

benchmarks/overhead.sh itself runs on the lab (it stops and restarts the
units); here: the unit is read back into the argv and environment it runs,
the API moves to the public address, the CPU tuning goes for the defaults
variant, and a process started by hand is stopped with its whole group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT
from servekit.module_utils.vllm_registry import NodeSpec, build_launch_plan, render_unit, systemd_quote

from servekit.bench import byhand

LAB_TINY = {"model": "/opt/servekit/models/lab-tiny", "dtype": "bfloat16", "tensor-parallel-size": 2,
            "gpu-memory-utilization": 0.5, "max-num-seqs": 4, "max-model-len": 512, "enforce-eager": True}
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TORCHINDUCTOR_CACHE_DIR": "/var/cache/servekit/torchinductor",
       "RAY_AUTH_MODE": "token", "ODD": "a b \"c\" $HOME 100%"}


def unit_for(node: NodeSpec, tmp_path: Path, **kwargs) -> tuple[object, str]:
    plan = build_launch_plan("lab-tiny", LAB_TINY, node, command=["/opt/servekit/venv/bin/vllm"],
                             environment=ENV)
    files = [str(tmp_path / "cluster.env"), str(tmp_path / "vllm-secrets.env")]
    return plan, render_unit(plan, environment_files=files, **kwargs)


def test_the_unit_reads_back_as_the_plan(tmp_path):
    node = NodeSpec(executor="ray", nnodes=2, host_address="10.213.0.10", api_host="127.0.0.1", api_port=8001)
    plan, unit = unit_for(node, tmp_path, after=["servekit-ray.service"])
    parsed = byhand.parse_unit(unit)
    assert parsed["exec_start"] == plan.argv
    assert parsed["environment"] == plan.env
    assert parsed["environment"]["ODD"] == 'a b "c" $HOME 100%'
    assert parsed["environment_files"] == [(str(tmp_path / "cluster.env"), True),
                                           (str(tmp_path / "vllm-secrets.env"), True)]


def test_a_worker_keeps_its_wait_out_of_the_argv(tmp_path):
    node = NodeSpec(executor="mp", nnodes=2, node_rank=1, head_address="10.213.0.10")
    plan, unit = unit_for(node, tmp_path, exec_start_pre=["/usr/bin/python3", "/opt/wait.py", "10.213.0.10"])
    assert byhand.parse_unit(unit)["exec_start"] == plan.argv
    with pytest.raises(ValueError, match="headless rank"):
        byhand.listen_on(plan.argv, "0.0.0.0:8000")


def test_the_api_moves_from_the_proxy_backend_to_the_public_port(tmp_path):
    plan, _ = unit_for(NodeSpec(executor="ray", nnodes=2, api_host="127.0.0.1", api_port=8001), tmp_path)
    argv = byhand.listen_on(plan.argv, "0.0.0.0:8000")
    assert argv[-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    assert "127.0.0.1" not in argv and "8001" not in argv
    assert argv[:-4] == plan.argv[:-4]
    with pytest.raises(ValueError, match=r"--listen: '8000'; allowed form: HOST:PORT"):
        byhand.listen_on(plan.argv, "8000")


def test_environment_in_systemd_order_and_the_defaults_variant(tmp_path):
    (tmp_path / "cluster.env").write_text("# managed\nGLOO_SOCKET_IFNAME=data0\nOMP_NUM_THREADS=2\n"
                                          "VLLM_HOST_IP=10.0.0.9\n")
    (tmp_path / "vllm-secrets.env").write_text('VLLM_API_KEY="sk-1"\n')
    _, unit = unit_for(NodeSpec(executor="ray", nnodes=2, host_address="10.213.0.10"), tmp_path)
    parsed = byhand.parse_unit(unit)
    env = byhand.launch_environment(parsed, {"PATH": "/usr/bin", "HOME": "/root", "SECRET_OF_CALLER": "x"})
    assert env["VLLM_API_KEY"] == "sk-1" and env["GLOO_SOCKET_IFNAME"] == "data0"
    assert env["VLLM_HOST_IP"] == "10.213.0.10"  # Environment= after EnvironmentFile=
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["OMP_NUM_THREADS"] == "2"
    assert "SECRET_OF_CALLER" not in env and env["PATH"] == "/usr/bin"
    defaults = byhand.launch_environment(parsed, {}, vllm_defaults=True)
    assert "VLLM_CPU_KVCACHE_SPACE" not in defaults and "OMP_NUM_THREADS" not in defaults
    assert defaults["VLLM_API_KEY"] == "sk-1" and defaults["TORCHINDUCTOR_CACHE_DIR"]
    kept = byhand.launch_environment(parsed, {}, vllm_defaults=True, keep=("VLLM_CPU_KVCACHE_SPACE",))
    assert kept["VLLM_CPU_KVCACHE_SPACE"] == "1" and "OMP_NUM_THREADS" not in kept


def test_a_missing_required_environment_file_is_an_error(tmp_path):
    unit = ("[Service]\nEnvironmentFile=/nonexistent/env\nExecStart=/bin/true\n")
    with pytest.raises(FileNotFoundError):
        byhand.launch_environment(byhand.parse_unit(unit), {})
    with pytest.raises(ValueError, match=r"no ExecStart= in the unit's \[Service\] section"):
        byhand.parse_unit("[Unit]\nExecStart=/bin/true\n")


def test_start_and_stop_a_process_group_by_hand(tmp_path):
    """A real start from a unit, then a stop that also ends the children (vLLM's engine processes)."""
    out = tmp_path / "seen"
    child = f"import os,time; open({str(out)!r},'w').write(os.environ['MARK']); time.sleep(300)"
    parent = f"import subprocess,sys,time; subprocess.Popen([sys.executable,'-c',{child!r}]); time.sleep(300)"
    unit = tmp_path / "u.service"
    exec_start = " ".join(systemd_quote(word) for word in (sys.executable, "-c", parent))
    unit.write_text(f"[Service]\nEnvironment=MARK=by-hand\nExecStart={exec_start}\n")
    pidfile = tmp_path / "pid"
    run = [sys.executable, str(ROOT / "servekit" / "bench" / "byhand.py")]
    started = subprocess.run([*run, "start", "--unit", str(unit), "--log", str(tmp_path / "log"),
                              "--pidfile", str(pidfile)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    for _ in range(60):
        if out.exists() and out.read_text():
            break
        time.sleep(0.5)
    assert out.read_text() == "by-hand"
    again = subprocess.run([*run, "start", "--unit", str(unit), "--log", str(tmp_path / "log2"),
                            "--pidfile", str(pidfile)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "exists: a by-hand vLLM may still run" in again.stderr
    stopped = subprocess.run([*run, "stop", "--pidfile", str(pidfile), "--timeout", "20"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert stopped.returncode == 0 and f"stopped {pid}" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not pidfile.exists()


def test_overhead_script_refuses_bad_settings():
    script = ROOT / "benchmarks" / "overhead.sh"
    proc = subprocess.run(["bash", str(script)], env={**os.environ, "VARIANTS": "provisioned fast"},
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 2
    assert "VARIANTS has 'fast'; allowed: provisioned, by-hand, defaults" in proc.stderr
    proc = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"ROUNDS": "0"}, "ROUNDS=0; allowed: a whole number >= 1"),
    ({"ROUNDS": "two"}, "ROUNDS=two; allowed: a whole number >= 1"),
    ({"DEFAULTS_KEEP": "VLLM_API_KEY"}, "DEFAULTS_KEEP has 'VLLM_API_KEY'; allowed: names of the tuning"),
])
def test_overhead_script_refuses_bad_rounds_and_keeps(env, message):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "overhead.sh")], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
