"""Model staging (roles/vllm/tasks/model.yml): rsync's --stats parsed from real output, the
command lines, and the model_stage module run by ansible-playbook against a real rsync (local
copy, and a pull from an rsync daemon configured by the role's own template) and the real
``hf`` CLI (offline, on a prepared cache: this machine has no hub access)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, run_task, run_tasks, write_play
from servekit.module_utils.model_stage import (
    default_hub_cache,
    hf_download_argv,
    hub_repo_dir,
    parse_rsync_stats,
    rsync_argv,
    ssh_rsh,
    ssh_target,
    stats_changed,
    tree_bytes,
)

FIXTURES = ROOT / "tests" / "fixtures" / "rsync"
RSYNC = shutil.which("rsync")
needs_rsync = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed here (apt-get install rsync)")
# A real rsync daemon, or the whole model stage played twice: `make test-slow` (CI runs it).
slow = pytest.mark.slow
HF = Path(sys.executable).parent / "hf"
TOKEN = "hf_secret_value"  # noqa: S105 - a test value that must never show up in argv or results


# --- rsync --stats, recorded (tests/fixtures/rsync/README.md) ----------------------------------

@pytest.mark.parametrize(("fixture", "expected", "changed"), [
    ("pull-first.txt", {"bytes": 3_000_010, "literal_bytes": 3_000_010, "files_transferred": 3,
                        "created": 4, "deleted": 0, "total_size": 3_000_010,
                        "bytes_received": 3_001_033}, True),
    ("pull-second.txt", {"bytes": 0, "literal_bytes": 0, "files_transferred": 0, "created": 0,
                         "deleted": 0, "total_size": 3_000_010, "bytes_sent": 50}, False),
    # one 4 KiB block rewritten, one file removed at the source: the whole 3 MB file counts as
    # transferred, 6,912 bytes of it crossed the wire
    ("pull-delta.txt", {"bytes": 3_000_000, "literal_bytes": 6_912, "matched_bytes": 2_993_088,
                        "files_transferred": 1, "deleted": 1}, True),
    ("pull-dry-run.txt", {"bytes": 3_000_008, "literal_bytes": 0, "files_transferred": 2,
                          "created": 4}, True),
])
def test_rsync_stats_of_real_runs(fixture, expected, changed):
    stats = parse_rsync_stats((FIXTURES / fixture).read_text())
    assert {key: stats[key] for key in expected} == expected
    assert stats_changed(stats) is changed


def test_output_without_stats_is_refused():
    with pytest.raises(ValueError, match="Total transferred file size"):
        parse_rsync_stats("sending incremental file list\nmodel.safetensors\n")


# --- command lines ---------------------------------------------------------------------------

def test_rsync_argv_keeps_times_resumes_and_deletes_strays():
    argv = rsync_argv("/src/m/", "/opt/servekit/models/m/")
    assert argv[:2] == ["rsync", "-a"] and argv[-2:] == ["/src/m/", "/opt/servekit/models/m/"]
    assert "--partial-dir=.rsync-partial" in argv and "--stats" in argv and "--delete" in argv
    assert "--checksum" not in argv and "--dry-run" not in argv
    checked = rsync_argv("/a/", "h:/b/", checksum=True, dry_run=True, rsh="ssh -p 2222",
                         rsync_path="sudo -n rsync")
    assert {"--checksum", "--dry-run", "--rsync-path=sudo -n rsync"} <= set(checked)
    assert checked[checked.index("-e") + 1] == "ssh -p 2222"


@pytest.mark.parametrize(("src", "dest", "name"), [("/a", "/b/", "src"), ("/a/", "/b", "dest")])
def test_rsync_argv_needs_directories(src, dest, name):
    with pytest.raises(ValueError, match=f"^{name} '.*': needs a trailing '/'"):
        rsync_argv(src, dest)


def test_ssh_rsh_carries_the_inventory_connection_settings():
    # what `servekit lab up` writes into inventory/lab/group_vars/all/lab.yml
    rsh = ssh_rsh(private_key="/var/lib/servekit/lab/id_ed25519",
                  common_args="-o UserKnownHostsFile=/var/lib/servekit/lab/known_hosts "
                              "-o StrictHostKeyChecking=yes")
    assert rsh == ("ssh -o BatchMode=yes -i /var/lib/servekit/lab/id_ed25519 -o UserKnownHostsFile="
                   "/var/lib/servekit/lab/known_hosts -o StrictHostKeyChecking=yes")
    assert ssh_rsh(port=2222).endswith("-p 2222")


@pytest.mark.parametrize(("host", "user", "expected"), [
    ("10.213.0.10", "root", "root@10.213.0.10:/m/"),
    ("fd00::10", None, "[fd00::10]:/m/"),
    ("node-1", "ubuntu", "ubuntu@node-1:/m/"),
])
def test_ssh_target(host, user, expected):
    assert ssh_target(host, "/m/", user) == expected


def test_hf_download_argv_never_carries_the_token():
    argv = hf_download_argv(["/opt/servekit/venv/bin/hf"], "openai/gpt-oss-20b", revision="main")
    assert argv == ["/opt/servekit/venv/bin/hf", "download", "openai/gpt-oss-20b", "--revision", "main"]
    assert not any("token" in word.lower() for word in argv)


@pytest.mark.parametrize("repo", ["/opt/servekit/models/lab-tiny", "a/b/c", ""])
def test_hf_download_refuses_what_is_not_a_hub_id(repo):
    with pytest.raises(ValueError, match="a hub id needs the form 'org/name'"):
        hf_download_argv(["hf"], repo)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "/root/.cache/huggingface/hub"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"),
    ({"HF_HOME": "/h"}, "/h/hub"),
    ({"HF_HOME": "/h", "HF_HUB_CACHE": "/c"}, "/c"),
])
def test_default_hub_cache_follows_huggingface_hub(env, expected):
    assert default_hub_cache(env, "/root") == expected


def test_default_hub_cache_is_huggingface_hubs_own(monkeypatch):
    """Same answer as huggingface_hub's constants in a fresh interpreter with that environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_"))}
    env["HF_HOME"] = "/srv/hf"
    code = "from huggingface_hub import constants as c; print(c.HF_HUB_CACHE)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert default_hub_cache({"HF_HOME": "/srv/hf"}, "/root") == out


# --- the module, through ansible-playbook, on a real rsync ------------------------------------

def _model(path: Path, size: int = 1_000_000) -> int:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    (path / "model.safetensors").write_bytes(os.urandom(size))
    for p in (path, *path.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return tree_bytes(str(path))


@needs_rsync
def test_a_second_copy_moves_no_bytes_and_changes_nothing(tmp_path):
    size = _model(tmp_path / "src")
    task = {"model_stage": {"mode": "rsync", "src": f"{tmp_path}/src/", "dest": f"{tmp_path}/node/m/"}}
    rc, first = run_task(tmp_path, task)
    assert rc == 0 and first["changed"] is True and first["bytes"] == size
    copied = (tmp_path / "node/m/model.safetensors").read_bytes()
    assert copied == (tmp_path / "src/model.safetensors").read_bytes()
    assert oct((tmp_path / "node/m/model.safetensors").stat().st_mode & 0o777) == "0o644"
    rc, second = run_task(tmp_path, task)
    assert rc == 0 and second["changed"] is False and second["bytes"] == 0
    (tmp_path / "src/extra.json").write_text("{}")
    rc, check = run_task(tmp_path, task, "--check")
    assert rc == 0 and check["changed"] is True and check["bytes"] == 2
    assert not (tmp_path / "node/m/extra.json").exists(), "check mode wrote a file"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _render_share(tmp_path: Path, model: Path, port: int, allow: str) -> Path:
    """The role's rsyncd template, rendered by Ansible for a one-node cluster on loopback."""
    conf = tmp_path / "model-share.conf"
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"cluster_data_address": "127.0.0.1", "vllm_model_share_port": port,
                      "cluster_nodes": ["head"], "cluster_addresses": {"head": allow},
                      # one share module per model the head holds (vars/main.yml __vllm_stage_items)
                      "__vllm_rsync_items": [{"name": model.name, "path": str(model), "share": "model"}]},
             "tasks": [{"ansible.builtin.template": {
                 "src": str(ROOT / "roles/vllm/templates/model-share.conf.j2"), "dest": str(conf),
                 "mode": "0644"}}]}]
    proc = ansible_playbook(write_play(tmp_path / "render.yml", play))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return conf


@pytest.fixture
def share_root():
    # the daemon, started as root, reads as nobody: a world-readable tree outside pytest's 0700 tmp
    path = Path(tempfile.mkdtemp(prefix="servekit-share-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _daemon(conf: Path, port: int):
    proc = subprocess.Popen([RSYNC, "--daemon", "--no-detach", f"--config={conf}"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the rsync daemon did not listen")


@slow
@needs_rsync
def test_nodes_pull_from_the_heads_share_once(tmp_path, share_root):
    size = _model(share_root / "lab-tiny")
    port = _free_port()
    conf = _render_share(tmp_path, share_root / "lab-tiny", port, "127.0.0.1")
    assert f"port = {port}" in conf.read_text() and "read only = yes" in conf.read_text()
    daemon = _daemon(conf, port)
    try:
        task = {"model_stage": {"mode": "rsync", "src": f"rsync://127.0.0.1:{port}/model/",
                                "dest": f"{tmp_path}/worker/lab-tiny/"}}
        rc, first = run_task(tmp_path, task)
        assert rc == 0 and first["changed"] is True and first["bytes"] == size
        assert first["wire_bytes"] > size  # the data and the protocol
        rc, second = run_task(tmp_path, task)
        assert rc == 0 and second["changed"] is False and second["bytes"] == 0
        # a write to the share is refused (read only)
        push = subprocess.run([RSYNC, "-a", f"{tmp_path}/worker/lab-tiny/", f"rsync://127.0.0.1:{port}/model/"],
                              capture_output=True, text=True, check=False)
        assert push.returncode != 0 and "read only" in push.stderr
    finally:
        daemon.terminate()
        daemon.wait(10)


@slow
@needs_rsync
def test_the_share_refuses_addresses_outside_the_cluster(tmp_path, share_root):
    _model(share_root / "m", 1000)
    port = _free_port()
    daemon = _daemon(_render_share(tmp_path, share_root / "m", port, "10.213.0.11"), port)
    try:
        rc, result = run_task(tmp_path, {"model_stage": {
            "mode": "rsync", "src": f"rsync://127.0.0.1:{port}/model/", "dest": f"{tmp_path}/out/"}})
        assert rc != 0 and result["failed"]
        # rsync hides a module from a client that "hosts allow" does not name
        assert "rsync exited 5" in result["msg"] and "Unknown module 'model'" in result["msg"]
    finally:
        daemon.terminate()
        daemon.wait(10)


# --- the hub leg, with the real hf CLI, offline ---------------------------------------------

def _cached_repo(cache: Path, repo: str, commit: str = "a" * 40) -> int:
    """A model as huggingface_hub's cache keeps it: blobs, a snapshot of links, refs/main."""
    folder = Path(hub_repo_dir(str(cache), repo))
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs/main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in (("config.json", b'{"model_type": "llama"}'), ("model.safetensors", os.urandom(5000))):
        blob = folder / "blobs" / f"{name}-blob"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return tree_bytes(str(folder))


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, dict]:
    """The hub leg in one ansible-playbook run: a cached model and an absent one, each run and then
    dry-run (task-level check mode, as --check did in a run per step)."""
    if not HF.exists():
        pytest.skip("huggingface_hub's hf CLI is not in this venv")
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub"
    _cached_repo(cache, "org/tiny")
    cached = {"model_stage": {"mode": "hub", "hf": [str(HF)], "repo": "org/tiny", "token": TOKEN,
                              "cache": str(cache)},
              "environment": {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}}
    absent = {"model_stage": {"mode": "hub", "hf": [str(HF)], "repo": "org/absent",
                              "cache": str(tmp / "empty")},
              "environment": {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "empty")}}
    steps = {"cached": cached, "cached-check": dict(cached, check_mode=True),
             "absent": absent, "absent-check": dict(absent, check_mode=True)}
    return dict(zip(steps, run_tasks(tmp, list(steps.values())), strict=True))


def test_hub_download_of_a_cached_model_moves_nothing_and_keeps_the_token_out_of_argv(hub):
    result = hub["cached"]
    assert not result.get("failed"), result
    assert result["changed"] is False and result["bytes"] == 0
    assert result["snapshot"].endswith("snapshots/" + "a" * 40)
    assert TOKEN not in str(result["cmd"]) and TOKEN not in str(result)
    check = hub["cached-check"]
    assert not check.get("failed") and check["changed"] is False


def test_hub_download_failure_names_the_model(hub):
    result = hub["absent"]
    assert result.get("failed") and "hf download of org/absent exited" in result["msg"]
    check = hub["absent-check"]
    assert not check.get("failed") and check["changed"] is True, \
        "an uncached model must show as a change in a dry run"


# --- the role's decisions (roles/vllm/vars/main.yml, defaults/main.yml), rendered by Ansible ----

# Every case's inputs, decided in one ansible-playbook run (one play per case): name -> (model, inputs).
DECISION_CASES = {
    "rsync": ("/opt/servekit/models/m", {"vllm_model_source": "/srv/m", "vllm_hf_token": TOKEN}),
    "hub": ("openai/gpt-oss-20b", {"vllm_hf_token": TOKEN}),
    "container": ("openai/gpt-oss-20b", {"cluster_runtime": "container", "vllm_hf_token": TOKEN}),
    # vLLM downloads at start, as before
    "none-hub": ("openai/gpt-oss-20b", {"vllm_model_hub_download": False}),
    "none-local": ("/opt/servekit/models/m", {}),  # files already on the nodes
}


@pytest.fixture(scope="module")
def decisions(tmp_path_factory) -> dict[str, dict]:
    """What the vllm role decides for each case's model path and inventory inputs."""
    tmp = tmp_path_factory.mktemp("decisions")
    names = ["__vllm_stage_mode", "__vllm_hub_env", "__vllm_hf_command", "vllm_ray_env_not_carried",
             "__vllm_model_revision", "__vllm_rsync_cluster"]
    plays = []
    for case, (model, inputs) in DECISION_CASES.items():
        # the inputs as the last vars file: it outranks the roles' defaults as -e did in a run per case
        (tmp / f"{case}-inputs.yml").write_text(json.dumps({"cluster_default_model": "m", **inputs}))
        plays.append({
            "name": case, "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars_files": [*(str(ROOT / f"roles/{role}/{kind}/main.yml")
                             for role, kind in (("cluster", "defaults"), ("runtime", "defaults"),
                                                ("vllm", "defaults"), ("vllm", "vars"))),
                           str(tmp / f"{case}-inputs.yml")],
            "tasks": [
                {"ansible.builtin.set_fact": {"validate_registry": {"models": {"m": {
                    "model": model, "revision": "v1"}}}}},
                {"ansible.builtin.copy": {
                    "dest": str(tmp / f"{case}.json"), "mode": "0644",
                    "content": "{{ {" + ", ".join(f"'{n}': {n}" for n in names)
                               + ", 'cache': __vllm_hf_cache} | to_json }}"}},
            ]})
    proc = ansible_playbook(write_play(tmp / "decide.yml", plays), env={"MODEL_NAME": ""})
    assert proc.returncode == 0, proc.stdout[-3000:]
    return {case: json.loads((tmp / f"{case}.json").read_text()) for case in DECISION_CASES}


def test_local_files_are_rsynced_and_no_rank_gets_the_hf_token(decisions):
    got = decisions["rsync"]
    assert got["__vllm_stage_mode"] == "rsync" and got["__vllm_hub_env"] == {}
    # the head opens its share for the other nodes' pulls (a path string once read as false here)
    assert got["__vllm_rsync_cluster"] is True
    assert "HF_TOKEN" in got["vllm_ray_env_not_carried"]


def test_a_hub_id_is_downloaded_first_and_served_offline(decisions):
    got = decisions["hub"]
    assert got["__vllm_stage_mode"] == "hub" and got["__vllm_hub_env"] == {"HF_HUB_OFFLINE": "1"}
    assert got["__vllm_hf_command"] == ["/opt/servekit/venv/bin/hf"]
    assert got["__vllm_model_revision"] == "v1"
    assert "HF_TOKEN" in got["vllm_ray_env_not_carried"], "ranks download nothing once staged"
    assert TOKEN not in json.dumps(got["__vllm_hf_command"])
    assert got["cache"] is None  # root's default cache, which the vLLM unit (root) reads too


def test_containers_download_inside_the_ray_container_into_the_mounted_cache(decisions):
    got = decisions["container"]
    assert got["__vllm_hf_command"] == ["/usr/bin/docker", "exec", "--env=HF_TOKEN",
                                        "--env=HF_HUB_DISABLE_PROGRESS_BARS", "servekit-ray", "hf"]
    # cluster_hf_cache, mounted as the containers' ~/.cache/huggingface
    assert got["cache"] == "/opt/servekit/hf-cache/hub"


@pytest.mark.parametrize("case", ["none-hub", "none-local"])
def test_nothing_is_staged_otherwise(decisions, case):
    got = decisions[case]
    assert got["__vllm_stage_mode"] == "none" and got["__vllm_hub_env"] == {}
    assert got["__vllm_rsync_cluster"] is False
    assert "HF_TOKEN" not in got["vllm_ray_env_not_carried"]


# --- tasks/model.yml itself, on the control node as the head (local connection) --------------

def _stage_play(tmp: Path, nodes: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    """roles/vllm/tasks/model.yml for a model at tmp/node/m whose files are in tmp/src."""
    inventory = {"all": {"children": {
        "head": {"hosts": {name: {} for name, group in nodes.items() if group == "head"}},
        "workers": {"hosts": {name: {} for name, group in nodes.items() if group == "workers"}}}}}
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [{"hosts": "head:workers", "gather_facts": False,
             "vars": {"__vllm_plan": {"active": True}},
             "pre_tasks": [{"ansible.builtin.set_fact": {"validate_registry": {"models": {"m": {
                 "model": str(tmp / "node" / "m")}}}}, "delegate_to": "localhost",
                 "delegate_facts": True, "run_once": True, "check_mode": False}],
             "roles": ["cluster"],
             "tasks": [{"ansible.builtin.include_role": {"name": "vllm", "tasks_from": "model.yml"}}]}]
    extra = {"cluster_default_model": "m", "vllm_model_source": str(tmp / "src"),
             "vllm_model_staging_report": str(tmp / "staging.json"), "ansible_connection": "local",
             "ansible_python_interpreter": sys.executable}
    return ansible_playbook("-i", tmp / "hosts.yml", write_play(tmp / "stage.yml", play),
                            "-e", json.dumps(extra), *flags, env={"MODEL_NAME": ""}, timeout=240)


@slow
@needs_rsync
def test_the_head_stages_once_and_a_second_run_changes_nothing(tmp_path):
    size = _model(tmp_path / "src")
    dry = _stage_play(tmp_path, {"node-a": "head"}, "--check", "--diff")
    assert dry.returncode == 0, dry.stdout[-4000:]
    assert not (tmp_path / "node" / "m" / "model.safetensors").exists(), "a dry run copied files"
    assert not (tmp_path / "staging.json").exists(), "a dry run wrote the report"
    first = _stage_play(tmp_path, {"node-a": "head"})
    assert first.returncode == 0, first.stdout[-4000:]
    assert f"node-a: {size} bytes" in first.stdout and "from control node" in first.stdout
    report = json.loads((tmp_path / "staging.json").read_text())
    assert report["nodes"]["node-a"]["bytes"] == size and report["bytes_total"] == size
    second = _stage_play(tmp_path, {"node-a": "head"})
    assert second.returncode == 0, second.stdout[-4000:]
    assert re.search(r"node-a\s*:\s*ok=\d+\s+changed=0", second.stdout), second.stdout[-2000:]
    assert "node-a: 0 bytes (0.00 Bytes) from control node, unchanged" in second.stdout
    assert json.loads((tmp_path / "staging.json").read_text())["bytes_total"] == 0


@needs_rsync
def test_a_dry_run_of_fresh_nodes_previews_the_head_and_touches_no_node(tmp_path):
    _model(tmp_path / "src")
    dry = _stage_play(tmp_path, {"node-a": "head", "node-b": "workers"}, "--check", "--diff")
    assert dry.returncode == 0, dry.stdout[-4000:]
    for task in ("Open the head's model share for the pulls", "Pull the models from the head"):
        result = dry.stdout.split(f"TASK [vllm : {task}]", 1)[1].split("TASK [", 1)[0]
        assert "skipping:" in result and "changed:" not in result and "ok:" not in result, result
    assert "changed: [node-a -> localhost]" in dry.stdout.split("Stage the models onto the head", 1)[1]
    assert not (tmp_path / "node").exists(), "a dry run created the model directory"


# --- the staging benchmark's larger model -------------------------------------------------------

def test_the_staging_model_is_a_few_hundred_mb_and_splits_over_tp2():
    from servekit.lab.tinymodel import PRESETS, VOCAB_SIZE

    shape = PRESETS["lab-staging"]
    assert shape.hidden // shape.heads == 64, "vLLM's CPU attention needs head_dim 64"
    assert shape.kv_heads % 2 == 0 and shape.heads % 2 == 0, "tensor parallel 2 splits the heads"
    kv = shape.hidden // shape.heads * shape.kv_heads
    per_layer = 2 * shape.hidden * shape.hidden + 2 * shape.hidden * kv + 3 * shape.hidden * 2 * shape.hidden
    weights = 2 * (shape.layers * per_layer + VOCAB_SIZE * shape.hidden)  # bf16, tied embeddings
    assert 200e6 < weights < 400e6, weights
    tiny = PRESETS["lab-tiny"]
    assert tiny.layers == 2 and tiny.max_shard_size is None, "the lab's own model must not change"


@needs_rsync
def test_the_push_goes_to_the_heads_address_not_the_control_nodes_disk(tmp_path):
    """Under delegate_to: localhost, ansible_connection/ansible_host name the control
    node: the first lab run copied the model into the control node's own model path
    and the head stayed empty. Here the head is an SSH host on a closed local port, so
    the push must try to reach it (and fail), and nothing may land on this disk."""
    _model(tmp_path / "src")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    # No ansible_connection, as in the lab's inventory: ssh by default, and under
    # delegation the variable reads "local" (the delegated host's).
    inventory = {"all": {"children": {"head": {"hosts": {"node-a": {
        "ansible_host": "127.0.0.1", "ansible_port": closed_port,
        "ansible_user": "nobody-here", "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes",
    }}}, "workers": {"hosts": {}}, "control": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "validate_registry": {"models": {"m": {"model": str(tmp_path / "node" / "m")}}}}}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [{"hosts": "head", "gather_facts": False,
             "vars": {"__vllm_plan": {"active": True}, "__vllm_rsync": {"stat": {"exists": True}}},
             "roles": ["cluster"],
             # imported (static), so --start-at-task finds the push
             "tasks": [{"ansible.builtin.import_role": {"name": "vllm", "tasks_from": "model.yml"}}]}]
    extra = {"cluster_default_model": "m", "vllm_model_source": str(tmp_path / "src"),
             "vllm_model_staging_report": str(tmp_path / "staging.json")}
    proc = ansible_playbook("-i", tmp_path / "hosts.yml", write_play(tmp_path / "push.yml", play),
                            "-e", json.dumps(extra), "--start-at-task",
                            "Stage the models onto the head from the control node",
                            env={"MODEL_NAME": "", "ANSIBLE_PYTHON_INTERPRETER": sys.executable}, timeout=240)
    pushed = proc.stdout.split("TASK [vllm : Stage the models onto the head from the control node]", 1)
    assert len(pushed) == 2, proc.stdout[-3000:]
    assert not (tmp_path / "node" / "m" / "config.json").exists(), "the push copied onto the control node"
    push = pushed[1].split("TASK [", 1)[0]
    assert proc.returncode != 0 and "failed: [node-a -> localhost]" in push, push[:3000]
    assert f"-p {closed_port}" in push or str(closed_port) in push, push[:3000]
