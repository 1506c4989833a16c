"""Shared fixtures: paths into the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
# ansible.cfg's default inventory is the lab, whose vaulted group_vars exist
# while a lab is up: plays the tests run on the implicit localhost must not
# depend on that (testinfra's verify suite passes its inventory explicitly).
os.environ["ANSIBLE_INVENTORY"] = str(ROOT / "tests" / "fixtures" / "no-hosts.yml")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return ROOT / "config" / "model_registry.yml"


def run_play(tmp_path: Path, task: dict, *flags: str) -> tuple[int, dict]:
    """Run one vllm_launch task on localhost; return rc and the task result."""
    task = dict(task, register="out")
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            dict(task, ignore_errors=True),
            {"ansible.builtin.copy": {"content": "{{ out | to_json }}",
                                      "dest": str(tmp_path / "result.json")},
             "check_mode": False},
            {"ansible.builtin.fail": {"msg": "module failed"}, "when": "out is failed"},
        ],
    }]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_LOCALHOST_WARNING="false")
    proc = subprocess.run([ANSIBLE_PLAYBOOK, str(playbook), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    result = json.loads((tmp_path / "result.json").read_text())
    return proc.returncode, result
