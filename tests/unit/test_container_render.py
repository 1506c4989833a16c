"""The container runtime for the example RoCE inventory, rendered by the roles' own variables.

No node runs here, so Ansible renders, with the ray and vllm roles' own
variables and the shared compose template, what each node would run: the Ray
container (a compose project for Docker, `podman run` of the same service for
Podman), the vLLM unit that runs `vllm serve` inside it, and the readiness
check. Real tools then check the result: `docker-compose config` (Debian's
package: the Compose-spec schema and its interpolation) and `podman create`
(Debian's Podman 4.3: its own validation of the flags, on a tiny image made
here with `podman import`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play

INVENTORY = ROOT / "inventory" / "example-2node-roce" / "hosts.yml"
COMPOSE = shutil.which("docker-compose")
PODMAN = shutil.which("podman")
HOSTS = ("spark-01", "spark-02")
# vllm_launch's arguments for the plan and the unit (as roles/vllm/tasks/plan.yml shares them)
LAUNCH = {
    "registry_path": str(ROOT / "config/model_registry.yml"), "model": "gpt-oss-20b",
    "node_rank": "{{ cluster_nodes.index(inventory_hostname) }}",
    "nnodes": 2, "head_address": "{{ cluster_head_address }}",
    "host_address": "{{ cluster_data_address }}", "executor": "ray", "runtime": "container",
    "command": "{{ vllm_command }}", "environment": "{{ vllm_environment }}",
    "environment_files": ["{{ cluster_env_file }}", "{{ vllm_secrets_file }}"],
    "checksums": "{{ {cluster_env_file: cluster_env_checksum} }}",
    "exec_prefix": "{{ cluster_exec_prefix }}", "env_names": "{{ __vllm_secret_names }}",
    "pid_file": "{{ __vllm_pid_file }}"}


def _render(tmp: Path, *extra: str) -> Path:
    out = tmp / "out"
    dump = ("{{ {'ray_exec_start': __ray_exec_start, 'ray_exec_stop': __ray_exec_stop,"
            " 'ray_python': cluster_python, 'vllm_exec_start': __vllm_plan.exec_argv,"
            " 'vllm_exec_stop': __vllm_plan.exec_stop_argv} | to_json }}")
    play = [{"ansible.builtin.import_playbook": str(ROOT / "playbooks" / "validate.yml")}, {
        "name": "Render the container runtime",
        "hosts": "head:workers",
        "gather_facts": False,
        "vars_files": [str(ROOT / f"roles/vllm/{kind}/main.yml") for kind in ("defaults", "vars")],
        "vars": {"out": str(out / "{{ inventory_hostname }}"), "preflight_gid_index": 3,
                 "cluster_env_file": "{{ out }}/cluster.env", "cluster_compose_dir": "{{ out }}/compose"},
        "roles": ["cluster"],
        "tasks": [
            {"ansible.builtin.file": {"path": "{{ out }}", "state": "directory", "mode": "0755"}},
            {"ansible.builtin.copy": {"content": "token\n", "dest": "{{ cluster_ray_auth_token_file }}",
                                      "mode": "0600"}},
            {"ansible.builtin.include_role": {"name": "rdma", "tasks_from": "env.yml", "public": True},
             "when": "cluster_rdma_enabled | bool"},
            {"ansible.builtin.copy": {"content": "", "dest": "{{ cluster_env_file }}", "mode": "0644"},
             "when": "not cluster_rdma_enabled | bool"},
            {"ansible.builtin.include_role": {"name": "cluster", "tasks_from": "env_checksum.yml"}},
            {"name": "Plan the vLLM launch", "vllm_launch": LAUNCH, "register": "__vllm_plan"},
            # the ray role's own task: the compose project and the service `podman run` runs
            {"ansible.builtin.include_role": {"name": "ray", "tasks_from": "compose.yml", "public": True}},
            {"name": "What the units run", "ansible.builtin.copy": {
                "content": dump, "dest": "{{ out }}/argv.json",
                "mode": "0644"}},
            {"name": "vLLM unit", "vllm_launch": {
                **LAUNCH, "dest": "{{ out }}/servekit-vllm.service"},
             "when": "__vllm_plan.active"},
        ],
    }]
    proc = ansible_playbook(
        "-i", INVENTORY, write_play(tmp / "render.yml", play),
        "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", "cluster_runtime=container",
        "-e", "cluster_ray_auth_token_file=" + str(tmp / "ray-auth-token"), "-e", f"cluster_hf_cache={tmp}",
        "-e", "vllm_api_key=sk-not-in-argv",
        # the ray role creates the folders it mounts into the Ray container
        "-e", f"cluster_vllm_config_root={tmp}/vllm-config", *extra)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


@pytest.fixture(scope="module")
def docker(tmp_path_factory) -> Path:
    return _render(tmp_path_factory.mktemp("docker"))


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Path:
    # a TCP cluster (no /dev/infiniband here for `podman create` to find), with
    # the lab's Podman settings
    return _render(tmp_path_factory.mktemp("podman"), "-e", "cluster_container_engine=podman",
                   "-e", "cluster_rdma_enabled=false", "-e", "cluster_podman_cgroups=disabled",
                   "-e", "cluster_container_bin_dir=/opt/servekit/venv/bin")


def _service(out: Path, host: str) -> dict:
    return yaml.safe_load((out / host / "compose/servekit-ray/compose.yaml").read_text())["services"]["ray"]


def _argv(out: Path, host: str) -> dict:
    return json.loads((out / host / "argv.json").read_text())


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (apt-get install docker-compose)")
def test_compose_projects_pass_a_real_compose_checker(docker):
    for host in HOSTS:
        path = docker / host / "compose/servekit-ray/compose.yaml"
        proc = subprocess.run([COMPOSE, "-f", str(path), "config", "--quiet"],
                              capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def test_compose_projects_carry_what_rdma_serving_needs(docker):
    for host in HOSTS:
        service = _service(docker, host)
        assert service["network_mode"] == "host" and service["ipc"] == "host", host
        assert "IPC_LOCK" in service["cap_add"], host
        assert service["ulimits"]["memlock"] == {"soft": -1, "hard": -1}, host
        assert service["devices"] == ["/dev/infiniband:/dev/infiniband"], host
        gpus = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpus["driver"] == "nvidia" and gpus["capabilities"] == ["gpu"], host
        assert service["env_file"] == [str(docker / host / "cluster.env")], host
        # NVIDIA's arm64 vLLM image, the example's (NVIDIA/dgx-spark-playbooks nvidia/vllm/README.md)
        assert service["image"] == "nvcr.io/nvidia/vllm:26.05-py3"
        assert service["container_name"] == "servekit-ray"


def test_a_changed_env_file_changes_the_ray_container_and_the_vllm_unit(docker, podman):
    """The container takes env_file's values when created: the file's SHA-1 is a label (compose) and a
    --label (Podman), so a changed file changes the project or the unit, and the restart recreates
    the container; the vLLM unit carries it too, so vLLM restarts (issue 24, item 4)."""
    for out in (docker, podman):
        for host in HOSTS:
            sha1 = hashlib.sha1((out / host / "cluster.env").read_bytes()).hexdigest()  # noqa: S324
            assert _service(out, host)["labels"] == {"servekit.cluster-env-sha1": sha1}, host
            if out is podman:
                assert f"--label=servekit.cluster-env-sha1={sha1}" in _argv(out, host)["ray_exec_start"]
    unit = (docker / "spark-01" / "servekit-vllm.service").read_text()
    sha1 = hashlib.sha1((docker / "spark-01" / "cluster.env").read_bytes()).hexdigest()  # noqa: S324
    assert f"# {docker / 'spark-01' / 'cluster.env'} sha1 {sha1}: read at start" in unit


def test_vllm_config_root_is_mounted_into_the_ray_container(docker, podman):
    """vLLM in the container reads ray_non_carry_over_env_vars.json there; without it the head's
    API key and HF token reach every rank (issue 24, item 9)."""
    for out in (docker, podman):
        config_root = out.parent / "vllm-config"
        for host in HOSTS:
            assert f"{config_root}:{config_root}:ro" in _service(out, host)["volumes"], host
            assert config_root.is_dir()
    assert f"--volume={config_root}:{config_root}:ro" in _argv(podman, "spark-01")["ray_exec_start"]


def _registry_with_a_local_model(tmp: Path, path: str) -> Path:
    registry = yaml.safe_load((ROOT / "config/model_registry.yml").read_text())
    registry["models"]["gpt-oss-20b"]["model"] = path
    out = tmp / "registry.yml"
    out.write_text(yaml.safe_dump(registry))
    return out


@pytest.mark.slow  # two whole renders of the example (28 s): `make test-slow`
def test_a_model_at_a_local_path_is_mounted_with_its_folder(tmp_path):
    """The staged model's folder reaches the container by itself; a mount the inventory already
    has for that container path is not doubled (the lab's old hand-written list)."""
    models = tmp_path / "models"
    registry = _registry_with_a_local_model(tmp_path, f"{models}/m")
    out = _render(tmp_path, "-e", f"cluster_registry_path={registry}")
    assert _service(out, "spark-01")["volumes"][1:3] == [
        f"{tmp_path}/vllm-config:{tmp_path}/vllm-config:ro", f"{models}:{models}:ro"]
    assert models.is_dir()
    # what the lab's inventory listed by hand before: the same mounts, once each
    again = tmp_path / "again"
    again.mkdir()
    out = _render(again, "-e", f"cluster_registry_path={registry}", "-e", json.dumps(
        {"cluster_container_volumes": [f"{models}:{models}:ro", "/var/cache/x:/var/cache/x"]}))
    volumes = _service(out, "spark-01")["volumes"]
    assert volumes[1:4] == [f"{again}/vllm-config:{again}/vllm-config:ro", f"{models}:{models}:ro",
                           "/var/cache/x:/var/cache/x"]


def test_host_ipc_carries_no_shm_size(docker, podman):
    """Podman refuses shm_size with host IPC; Docker ignores it (the host's /dev/shm is used)."""
    for out in (docker, podman):
        for host in HOSTS:
            assert "shm_size" not in _service(out, host), host
            assert "--shm-size" not in " ".join(_argv(out, host)["ray_exec_start"]), host


def test_podman_gets_the_gpus_by_cdi_name(podman):
    service = _service(podman, "spark-01")
    assert "deploy" not in service
    assert service["devices"] == ["nvidia.com/gpu=all"]
    assert "--device=nvidia.com/gpu=all" in _argv(podman, "spark-01")["ray_exec_start"]


def test_vllm_runs_inside_the_ray_container(docker):
    """vLLM's ray.init() must find the node's raylet: it runs in the Ray container (run_cluster.sh)."""
    argv = _argv(docker, "spark-01")["vllm_exec_start"]
    name = argv.index("servekit-ray")
    assert argv[:2] == ["/usr/bin/docker", "exec"]
    assert "--env=VLLM_API_KEY" in argv[:name] and "--env=VLLM_HOST_IP" in argv[:name]
    assert not any("sk-not-in-argv" in word for word in argv), "secrets reach the exec by name only"
    assert argv[name + 1:name + 3] == ["/bin/sh", "-c"]
    assert argv[name + 4:name + 8] == ["vllm", "vllm", "serve", "openai/gpt-oss-20b"]
    assert "--distributed-executor-backend" in argv
    unit = (docker / "spark-01/servekit-vllm.service").read_text()
    assert "ExecStart=/usr/bin/docker exec " in unit
    assert "ExecStop=/usr/bin/docker exec servekit-ray /bin/sh -c " in unit
    assert "$$p" in unit, "systemd would expand a bare $ in the stop script"
    assert not (docker / "spark-01/compose/servekit-vllm").exists()


def test_ray_joins_the_head_from_its_container(docker):
    worker = _service(docker, "spark-02")
    assert worker["entrypoint"] == ["ray"]
    assert "--address=192.168.100.1:6379" in worker["command"]
    assert "--node-ip-address=192.168.100.2" in worker["command"]
    assert worker["environment"]["RAY_AUTH_MODE"] == "token"
    assert worker["volumes"][-1].endswith("ray-auth-token:ro")
    argv = _argv(docker, "spark-02")
    assert argv["ray_exec_start"][:2] == ["/usr/bin/docker", "compose"]
    assert argv["ray_exec_stop"][-1] == "down"


def test_readiness_check_runs_python_in_the_ray_container(docker, podman):
    """Only the native runtime builds the venv: the container's Python asks the head's GCS."""
    assert _argv(docker, "spark-01")["ray_python"] == ["/usr/bin/docker", "exec", "servekit-ray", "python3"]
    assert _argv(podman, "spark-01")["ray_python"] == [
        "/usr/bin/podman", "exec", "servekit-ray", "/opt/servekit/venv/bin/python3"]


def test_an_imported_image_runs_the_venv_binaries(podman):
    argv = _argv(podman, "spark-01")
    assert "--entrypoint=[\"/opt/servekit/venv/bin/ray\"]" in argv["ray_exec_start"]
    assert "/opt/servekit/venv/bin/vllm" in argv["vllm_exec_start"]


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory) -> str:
    """A local image of a few files (`podman import`), for `podman create` to check flags against."""
    if PODMAN is None:
        pytest.skip("podman not installed (apt-get install podman; make host-deps)")
    archive = tmp_path_factory.mktemp("image") / "tiny.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(sys.executable, arcname="bin/python3")
    name = "localhost/servekit-test-tiny:1"
    proc = subprocess.run([PODMAN, "import", str(archive), name], capture_output=True, text=True,
                          check=False, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"podman cannot import an image here: {proc.stderr.strip()}")
    yield name
    subprocess.run([PODMAN, "rmi", "-f", name], capture_output=True, check=False, timeout=60)


def test_podman_accepts_the_ray_container(podman, tiny_image):
    """Debian's Podman 4.3 validates the flags at create time (host IPC with shm_size,
    multiple networks with host networking, ...)."""
    for host in HOSTS:
        argv = _argv(podman, host)["ray_exec_start"]
        assert argv[:2] == ["/usr/bin/podman", "run"] and "--cgroups=disabled" in argv
        image = argv.index("nvcr.io/nvidia/vllm:26.05-py3")
        create = [PODMAN, "create", *argv[2:image], tiny_image, *argv[image + 1:]]
        create = [word for word in create if word not in ("--rm", "--cgroups=disabled")]
        proc = subprocess.run(create, capture_output=True, text=True, check=False, timeout=120)
        assert proc.returncode == 0, f"{shlex.join(create)}: {proc.stderr}"
        subprocess.run([PODMAN, "rm", "-f", proc.stdout.strip()], capture_output=True, check=False,
                       timeout=60)
