"""The runtime role's container-engine decisions, evaluated by Ansible with the role's own variables.

- Which engine is installed: dpkg's answer (the real `dpkg-query --show
  --showformat='${Package} ${db:Status-Status}\\n'` format, as the role asks
  it) decides whether Debian's engine is installed: docker-ce conflicts with
  docker.io, so an installed docker-ce must stay (issue 11).
- /etc/docker/daemon.json is merged, not overwritten: a real file is read
  with the role's slurp, merged by the role's expression, and the user's keys
  are still there.
"""

from __future__ import annotations

import json
import sys

import pytest
from helpers import ROOT, ansible_playbook, write_play

CASES = {
    # engine, dpkg-query lines -> an engine of that kind is installed
    "docker-ce kept": ("docker", ["docker-ce installed", "docker.io not-installed"], True),
    "docker.io kept": ("docker", ["docker-ce not-installed", "docker.io installed", "podman installed"],
                       True),
    "no docker": ("docker", ["docker-ce not-installed", "podman installed"], False),
    "nothing known": ("docker", [], False),
    "podman kept": ("podman", ["docker.io installed", "podman installed"], True),
    "no podman": ("podman", ["docker-ce installed", "podman config-files"], False),
}
USER_DAEMON = {
    "data-root": "/srv/docker",
    "log-driver": "journald",
    "runtimes": {"crun": {"path": "/usr/bin/crun"}},
    "default-ulimits": {"core": {"Name": "core", "Soft": 0, "Hard": 0}},
}


@pytest.fixture(scope="module")
def decided(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("engine")
    (tmp / "daemon.json").write_text(json.dumps(USER_DAEMON))
    tasks = [{"name": f"Decide: {name}",
              "ansible.builtin.set_fact": {f"case_{i}": "{{ __runtime_engine_installed }}"},
              "vars": {"cluster_container_engine": engine, "__runtime_engines": {"stdout_lines": lines}}}
             for i, (name, (engine, lines, _)) in enumerate(CASES.items())]
    tasks += [
        {"ansible.builtin.slurp": {"src": str(tmp / "absent.json")}, "register": "absent",
         "failed_when": False},
        {"name": "Merge where there was no file", "ansible.builtin.set_fact": {
            "fresh": "{{ __runtime_docker_daemon_merged }}"},
         "vars": {"__runtime_docker_daemon_current": "{{ absent }}"}},
        {"name": "Read the daemon's configuration (the role's slurp)", "ansible.builtin.slurp": {
            "src": str(tmp / "daemon.json")}, "register": "__runtime_docker_daemon_current"},
        {"ansible.builtin.copy": {"dest": str(tmp / "out.json"), "mode": "0644", "content": "{{ {"
            + ", ".join(f"'case_{i}': case_{i}" for i in range(len(CASES)))
            + ", 'merged': __runtime_docker_daemon_merged, 'fresh': fresh} | to_json }}"}},
    ]
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars_files": [str(ROOT / "roles/cluster/defaults/main.yml"),
                            str(ROOT / "roles/runtime/defaults/main.yml"),
                            str(ROOT / "roles/runtime/vars/main.yml")],
             "tasks": tasks}]
    proc = ansible_playbook(write_play(tmp / "play.yml", play),
                            "-e", f"ansible_python_interpreter={sys.executable}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("index,name", list(enumerate(CASES)), ids=list(CASES))
def test_an_installed_engine_is_kept(decided, index, name):
    assert decided[f"case_{index}"] is CASES[name][2], name


def test_daemon_json_keeps_the_users_keys(decided):
    merged = decided["merged"]
    assert merged["data-root"] == "/srv/docker" and merged["log-driver"] == "journald"
    assert merged["runtimes"]["crun"] == {"path": "/usr/bin/crun"}, "the user's runtime stays"
    assert merged["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert merged["default-ulimits"]["core"]["Hard"] == 0
    assert merged["default-ulimits"]["memlock"] == {"Name": "memlock", "Soft": -1, "Hard": -1}


def test_daemon_json_is_written_where_there_was_none(decided):
    assert set(decided["fresh"]) == {"default-ulimits", "runtimes"}
