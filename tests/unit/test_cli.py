"""The servekit console script, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

SERVEKIT = str(Path(sys.executable).with_name("servekit"))


def _plain(text: str) -> str:
    """ansible's output without its colours (ansible-runner runs it on a pty)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def servekit(*args: str, env: dict | None = None, timeout: int = 180):
    return subprocess.run([SERVEKIT, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), check=False)


def test_models_table_lists_every_registry_entry():
    proc = servekit("models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "TP", "PP", "DTYPE", "DESCRIPTION"]
    row = next(line for line in lines if line.startswith("gpt-oss-20b "))
    assert row.split()[:5] == ["gpt-oss-20b", "openai/gpt-oss-20b", "2", "1", "bfloat16"]
    assert row.endswith("Lightweight")
    assert any(line.startswith("lab-tiny ") for line in lines)


def test_render_json_shows_seed_arguments_plus_executor():
    proc = servekit("render", "gpt-oss-20b", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["argv"][:15] == [
        "vllm", "serve", "openai/gpt-oss-20b", "--dtype", "bfloat16",
        "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.35",
        "--max-num-seqs", "8", "--max-model-len", "131072",
        "--served-model-name", "gpt-oss-20b"]
    assert out["argv"][15:17] == ["--distributed-executor-backend", "ray"]
    assert isinstance(out["env"], dict)
    assert out["unit"].startswith(
        "#\n# Ansible managed\n#\n# Managed by servekit (vllm_launch): model gpt-oss-20b")


def test_model_name_env_is_the_default_model():
    proc = servekit("render", "--format", "json", "--executor", "mp", "--node-rank", "1",
                    "--head-address", "10.0.0.1", env={"MODEL_NAME": "lab-tiny"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model_name"] == "lab-tiny" and out["role"] == "worker"
    assert "--headless" in out["argv"]


def test_render_text_is_a_shell_command():
    proc = servekit("render", "lab-tiny", "--executor", "mp", "--host-address", "10.0.0.1")
    assert proc.returncode == 0
    assert "VLLM_HOST_IP=10.0.0.1 \\" in proc.stdout
    assert "vllm serve /opt/servekit/models/lab-tiny" in proc.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["render", "nope"], {}, "unknown model 'nope'; available models: "),
        (["render"], {"MODEL_NAME": ""}, "no model selected (set MODEL_NAME); available models"),
        (["render", "gpt-oss-20b", "--nnodes", "1"], {}, "but the inventory offers 1"),
        (["render", "gpt-oss-20b", "--executor", "slurm"], {}, "argument --executor: invalid choice"),
        (["render", "gpt-oss-20b", "--node-rank", "x"], {}, "argument --node-rank: invalid int"),
        (["render", "gpt-oss-20b", "--node-rank", "5"], {}, "node_rank 5 is outside the cluster"),
        (["models", "--registry", "/nonexistent.yml"], {}, "cannot read"),
        (["up", "--inventory", "/nonexistent"], {}, "--inventory /nonexistent: no such file"),
        (["up", "--model", "nope"], {}, "unknown model 'nope'"),
        (["frobnicate"], {}, "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, env, message):
    proc = servekit(*args, env=env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_registry_file_exits_2(tmp_path):
    bad = tmp_path / "reg.yml"
    bad.write_text("models:\n  x:\n    model: m\n    tensor-parallel-size: two\n")
    proc = servekit("render", "x", "--registry", str(bad))
    assert proc.returncode == 2
    assert "model 'x': key 'tensor-parallel-size' must be an integer" in proc.stderr


def test_up_runs_site_yml_through_ansible_runner():
    # --tags validate: only always-tagged tasks run: the validate play on the
    # control node and the roles' argument checks, which connect to no host.
    proc = servekit("up", "--check", "-i", "inventory/example-2node-roce/hosts.yml",
                    "--model", "gpt-oss-20b", "--tags", "validate", env=NO_SSH)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "model gpt-oss-20b: 2 device(s) over 2 of 2 node(s)" in proc.stdout
    assert "PLAY RECAP" in proc.stdout
    assert "TASK [preflight : Gather GPU, RDMA" not in proc.stdout
    assert "unreachable=1" not in proc.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("cluster_executor=slurm", "value of cluster_executor must be one of: ray, mp, got: slurm"),
        ("cluster_devices_per_node=0", "cluster_devices_per_node = 0: must be from 1 to 64"),
    ],
)
def test_up_reports_inventory_errors_from_the_validate_play_as_bad_input(extra, message):
    proc = servekit("up", "-i", "inventory/example-2node-roce/hosts.yml", "-e", extra,
                    "--tags", "validate", env=NO_SSH)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_ctrl_c_cancels_a_running_playbook(tmp_path):
    """SIGINT while a play runs: the playbook is stopped and servekit exits 130."""
    marker = f"sleep {600 + os.getpid() % 1000}"  # unique: no other process matches it
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "ansible.cfg", project / "ansible.cfg")
    (project / "site.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.command: {marker}\n      changed_when: false\n"
    )
    inventory = project / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    # As from a terminal: SIGINT not ignored. Earlier tests in the same pytest
    # process can leave SIGINT and SIGQUIT ignored (seen in CI: SigIgn 0x6),
    # and an ignored signal stays ignored across exec; a handler does not.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([SERVEKIT, "up", "-i", str(inventory)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, SERVEKIT_HOME=str(project)))
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", marker], capture_output=True,
                          check=False).returncode == 0:
            break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the playbook never started its task")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "cancelled" in stderr
    time.sleep(1)
    leftover = subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False)
    assert leftover.returncode == 1, f"playbook task still running: {leftover.stdout}"


def test_lab_vault_path_is_the_lab_state_file_that_the_environment_moves(tmp_path):
    """The Makefile and .ci scripts read the lab's vault password file from here, not a copy."""
    proc = servekit("lab", "vault-path", env={"SERVEKIT_LAB_DIR": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{tmp_path / 'state' / 'vault-pass'}\n"
    env = {k: v for k, v in os.environ.items() if k != "SERVEKIT_LAB_DIR"}
    default = subprocess.run([SERVEKIT, "lab", "vault-path"], capture_output=True, text=True,
                             env=env, check=True, timeout=60)
    assert default.stdout.strip() == "/var/lib/servekit/lab/vault-pass"


# --------------------------------------------------------------------------
# servekit up: one run's settings never reach the next (issue 10, item 3)
# --------------------------------------------------------------------------


def _local_project(tmp_path: Path, playbook: str) -> tuple[Path, Path]:
    """A SERVEKIT_HOME with ``playbook`` as site.yml and a localhost-only inventory."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "ansible.cfg", project / "ansible.cfg")
    (project / "site.yml").write_text(playbook)
    inventory = project / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    return project, inventory


def _up(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return servekit("up", *args, env=dict(env or {}, SERVEKIT_HOME=str(project)))


WRITE_MARKER = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: "{{ marker_path }}"
        content: "{{ marker_content | default('default') }}\\n"
        mode: "0644"
"""


def test_up_applies_after_a_dry_run(tmp_path):
    marker = tmp_path / "marker"
    project, inventory = _local_project(tmp_path, WRITE_MARKER.replace("{{ marker_path }}", str(marker)))
    dry = _up(project, "-i", str(inventory), "--check")
    assert dry.returncode == 0, dry.stdout[-2000:]
    assert not marker.exists(), "the dry run wrote the file"
    real = _up(project, "-i", str(inventory))
    assert real.returncode == 0, real.stdout[-2000:]
    assert marker.read_text() == "default\n", "the run after `up --check` was a dry run again"
    assert "changed=1" in real.stdout


def test_up_extra_vars_do_not_reach_the_next_run(tmp_path):
    marker = tmp_path / "marker"
    project, inventory = _local_project(tmp_path, WRITE_MARKER.replace("{{ marker_path }}", str(marker)))
    first = _up(project, "-i", str(inventory), "-e", "marker_content=from-run-1")
    assert first.returncode == 0, first.stdout[-2000:]
    assert marker.read_text() == "from-run-1\n"
    second = _up(project, "-i", str(inventory))
    assert second.returncode == 0, second.stdout[-2000:]
    assert marker.read_text() == "default\n", "run 1's -e marker_content leaked into run 2"
    # Each run keeps its own artifacts; the recorded command is that run's alone.
    runs = sorted(project.glob(".cache/runner/*/artifacts/*/command"))
    commands = [json.loads(p.read_text()) for p in runs]
    assert len(commands) == 2
    assert [("marker_content=from-run-1" in " ".join(c["command"])) for c in commands] == [True, False]


def test_up_passes_the_vault_password_file_to_ansible(tmp_path):
    project, inventory = _local_project(tmp_path, """\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Show the vaulted value
      ansible.builtin.debug:
        msg: "secret is {{ vaulted }}"
""")
    password = tmp_path / "vault-pass"
    password.write_text("servekit-test\n")
    vault = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-vault")), "encrypt_string", "--vault-password-file",
         str(password), "opened", "--name", "vaulted"],
        capture_output=True, text=True, check=True)
    (project / "group_vars" / "all").mkdir(parents=True)
    (project / "group_vars" / "all" / "vault.yml").write_text(vault.stdout)
    proc = _up(project, "-i", str(inventory),
               env={"ANSIBLE_VAULT_PASSWORD_FILE": str(password)})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "secret is opened" in proc.stdout


# --------------------------------------------------------------------------
# servekit up: no accidental targets (issue 10, item 4)
# --------------------------------------------------------------------------

# Belt and braces for runs against the example inventory: should a play ever
# reach its nodes, ssh is /bin/false (fails at once, sends nothing).
NO_SSH = {"ANSIBLE_SSH_EXECUTABLE": "/bin/false", "ANSIBLE_TIMEOUT": "1"}
EXAMPLE = "inventory/example-2node-roce/hosts.yml"


def test_up_refuses_the_example_inventory_before_any_node():
    proc = servekit("up", "-i", EXAMPLE, env=NO_SSH)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "cluster_example_inventory is true" in proc.stderr
    assert "delete group_vars/all/example.yml" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # The validate stage ran and passed; nothing ran on (or tried to reach) the example's nodes.
    assert "model gpt-oss-20b: 2 device(s) over 2 of 2 node(s)" in proc.stdout
    assert "spark-0" not in proc.stdout, proc.stdout[-3000:]
    recap = re.findall(r"^(\S+)\s+: .*failed=(\d+)", _plain(proc.stdout).split("PLAY RECAP")[1], re.M)
    assert recap == [("localhost", "1")], recap


def test_example_inventory_still_passes_the_validate_stage(example_validate):
    playbook = example_validate("example-2node-roce")  # with NO_SSH's settings (tests/conftest.py)
    assert playbook.returncode == 0, playbook.stdout[-2000:]
    # and with any other stage asked for, the guard stops the run
    proc = servekit("up", "-i", EXAMPLE, "--tags", "validate,preflight", env=NO_SSH)
    assert proc.returncode == 2 and "cluster_example_inventory is true" in proc.stderr


def test_up_refuses_the_example_inventory_under_limit():
    # --limit alone would skip the plays on the control node; servekit keeps them.
    proc = servekit("up", "-i", EXAMPLE, "--limit", "spark-02", env=NO_SSH)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "cluster_example_inventory is true" in proc.stderr
    assert "spark-0" not in proc.stdout


def test_up_without_inventory_needs_the_lab(tmp_path):
    project, _ = _local_project(tmp_path, WRITE_MARKER)
    (project / "inventory" / "lab").mkdir(parents=True)
    proc = _up(project)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "servekit: error: no --inventory given and no lab inventory (inventory/lab/hosts.yml): "
        "run `servekit lab up`, or pass -i inventory/<cluster>")


def test_up_without_inventory_runs_on_the_lab(tmp_path):
    marker = tmp_path / "marker"
    project, inventory = _local_project(tmp_path, WRITE_MARKER.replace("{{ marker_path }}", str(marker)))
    (project / "inventory" / "lab").mkdir(parents=True)
    shutil.move(inventory, project / "inventory" / "lab" / "hosts.yml")
    proc = _up(project)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert marker.read_text() == "default\n"


def test_ansible_cfg_default_inventory_is_the_lab():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "ansible.cfg")
    assert cfg["defaults"]["inventory"] == "./inventory/lab"


# --------------------------------------------------------------------------
# servekit up: half-done runs are visible (issue 10, item 5)
# --------------------------------------------------------------------------

HALF_DONE = """\
- name: Stage one
  hosts: nodes
  gather_facts: false
  any_errors_fatal: {fatal}
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: "{tmp}/marker-{{{{ inventory_hostname }}}}"
        content: "1\\n"
        mode: "0644"
    - name: Recover from a failure
      block:
        - name: Fail and be rescued
          ansible.builtin.command: "false"
          changed_when: false
          when: inventory_hostname == 'node-a'
      rescue:
        - name: Rescue it
          ansible.builtin.debug:
            msg: rescued
    - name: Unchanged step
      ansible.builtin.command: "true"
      changed_when: false
    - name: Break on node-b
      ansible.builtin.fail:
        msg: "{msg}"
      when: inventory_hostname == 'node-b'
- name: Stage two
  hosts: nodes
  gather_facts: false
  tasks:
    - name: Later step
      ansible.builtin.command: "true"
"""


def _nodes_inventory(path: Path, unreachable: bool = False) -> Path:
    local = f"ansible_connection: local, ansible_python_interpreter: {sys.executable}"
    text = ("all:\n  children:\n    nodes:\n      hosts:\n"
            f"        node-a: {{{local}}}\n        node-b: {{{local}}}\n")
    if unreachable:
        # ssh is /bin/false for node-c: unreachable at once, nothing is sent
        text += "        node-c: {ansible_host: 127.0.0.1, ansible_ssh_executable: /bin/false}\n"
    path.write_text(text)
    return path


def _real_events(tmp_path: Path, fatal: bool, msg: str = "broken on purpose") -> list[dict]:
    """The events ansible-runner reports for HALF_DONE on three local nodes."""
    import ansible_runner

    playbook = tmp_path / "half-done.yml"
    playbook.write_text(HALF_DONE.format(fatal=str(fatal).lower(), tmp=tmp_path, msg=msg))
    private = tmp_path / "runner"
    private.mkdir()
    runner = ansible_runner.run(
        private_data_dir=str(private), playbook=str(playbook),
        inventory=str(_nodes_inventory(tmp_path / "hosts.yml", unreachable=not fatal)),
        quiet=True, suppress_env_files=True,
        envvars={"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                 "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert runner.rc != 0
    return list(runner.events)


def test_failure_summary_names_changes_failures_and_the_rest(tmp_path):
    from servekit.runner import failure_summary

    events = _real_events(tmp_path, fatal=False)
    text = failure_summary(events, ["servekit", "up", "-i", "inventory/x", "-e", "a=b"])
    lines = text.splitlines()
    assert lines[0] == "servekit: what this run changed on each node before it stopped:"
    assert [line.split()[0] for line in lines[1:] if not line.startswith("     ")][:3] == [
        "node-a", "node-b", "node-c"]
    body = "\n".join(line.strip() for line in lines)
    # node-a: its rescued failure is no failure; it wrote the marker (unchanged steps are not listed)
    assert "node-a  no failure\nchanged: Write the marker\nchanged: Later step\nnode-b" in body
    assert "node-b  FAILED at 'Break on node-b': broken on purpose\nchanged: Write the marker\n" in body
    assert "node-c  UNREACHABLE at 'Write the marker'" in body
    assert "Unchanged step" not in body
    # node-a went on to stage two: only the failed nodes need the run again
    assert "to finish: servekit up -i inventory/x -e a=b --limit node-b,node-c" in body
    assert "to revert: nothing is undone automatically" in body


def test_failure_summary_without_limit_when_the_run_stopped_everywhere(tmp_path):
    from servekit.runner import failure_summary

    events = _real_events(tmp_path, fatal=True, msg="vllm: m gave no completion. Rolled back to lab-tiny")
    body = "\n".join(line.strip() for line in failure_summary(
        events, ["servekit", "up", "--limit", "node-a,node-b"]).splitlines())
    assert "node-a  no failure\nchanged: Write the marker" in body
    assert "to finish: servekit up --limit node-a,node-b   (tasks already applied" in body
    assert "to revert: the vllm stage already rolled the failed model switch back" in body


def test_up_prints_the_summary_when_a_node_fails(tmp_path):
    project, _ = _local_project(tmp_path, HALF_DONE.format(fatal="true", tmp=tmp_path, msg="boom"))
    inventory = _nodes_inventory(project / "nodes.yml")
    proc = _up(project, "-i", str(inventory), "-e", "x=1")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert proc.stderr.startswith("servekit: playbook failed on node-b at 'Break on node-b'")
    assert "what this run changed on each node before it stopped:" in proc.stderr
    assert "FAILED at 'Break on node-b': boom" in proc.stderr
    assert f"to finish: servekit up -i {inventory} -e x=1   (tasks already applied report ok)" in proc.stderr
    dry = _up(project, "-i", str(inventory), "--check")
    assert dry.returncode == 1
    assert "dry run: nothing on the nodes was changed" in dry.stderr
    assert "to finish" not in dry.stderr


# --------------------------------------------------------------------------
# servekit/runner.py: bad input is known by the role that failed, not a play title
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "bad_input"), [
    ("validate", True), ("cluster", True), ("vllm", False), (None, False), ("", False)])
def test_failures_of_input_checking_roles_are_bad_input(role, bad_input):
    from servekit.runner import is_input_failure

    assert is_input_failure({"role": role, "play": "any title", "host": "localhost"}) is bad_input


def test_the_example_guard_is_a_task_of_an_input_role():
    """playbooks/preflight.yml stops example inventories with the validate role's task."""
    from servekit.runner import INPUT_ROLES

    plays = yaml.safe_load((ROOT / "playbooks" / "preflight.yml").read_text())
    guard = plays[0]["tasks"][0]["ansible.builtin.import_role"]
    assert guard["name"] in INPUT_ROLES and guard["tasks_from"] == "example_guard.yml"


def test_terminate_descendants_stops_the_whole_tree(tmp_path):
    import psutil

    from servekit.runner import terminate_descendants

    parent = subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600 & wait"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(psutil.Process(parent.pid).children()) < 2:
            time.sleep(0.05)
        sleeps = psutil.Process(parent.pid).children()
        stopped = terminate_descendants(parent.pid, grace_s=5)
        assert sorted(stopped) == sorted(p.pid for p in sleeps) and len(stopped) == 2
        parent.wait(timeout=10)  # sh's `wait` returns once both are gone
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sleeps)
    finally:
        parent.kill()
