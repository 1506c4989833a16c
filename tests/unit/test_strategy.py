"""Mitogen is the default strategy (ansible.cfg), and ANSIBLE_STRATEGY=linear switches back.

Mitogen runs each module inside one long-lived Python per node, whose command line it
names ``(mitogen:user@host:pid)``; Ansible's own strategy starts a fresh Python per task.
The play below prints the command line of the process that runs its shell task's module.
"""

from __future__ import annotations

import sys

import pytest
from helpers import ROOT, ansible, ansible_playbook, write_play

PLAY = [{
    "hosts": "localhost", "connection": "local", "gather_facts": False,
    "vars": {"ansible_python_interpreter": sys.executable},
    "tasks": [
        {"name": "The module's process", "ansible.builtin.shell": "tr '\\0' ' ' < /proc/$PPID/cmdline",
         "register": "parent", "changed_when": False},
        {"ansible.builtin.debug": {"msg": "PARENT={{ parent.stdout }}"}},
    ],
}]


def test_ansible_cfg_selects_mitogen():
    proc = ansible("ansible-config", "dump", "--only-changed", unset=["ANSIBLE_STRATEGY"])
    assert proc.returncode == 0, proc.stderr
    # lines like "DEFAULT_STRATEGY(/path/ansible.cfg) = mitogen_linear"
    settings = {key.split("(", 1)[0]: value for key, value in
                (line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)}
    assert settings.get("DEFAULT_STRATEGY") == "mitogen_linear", proc.stdout
    assert settings.get("DEFAULT_STRATEGY_PLUGIN_PATH") == f"['{ROOT / 'strategy_plugins'}']", proc.stdout


@pytest.mark.parametrize(("strategy", "mitogen"), [(None, True), ("linear", False)])
def test_modules_run_in_mitogen_unless_switched_back(tmp_path, strategy, mitogen):
    env = {"ANSIBLE_STRATEGY": strategy} if strategy else {}
    proc = ansible_playbook(write_play(tmp_path / "play.yml", PLAY), unset=["ANSIBLE_STRATEGY"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parent = next(line for line in proc.stdout.splitlines() if "PARENT=" in line)
    assert ("(mitogen:" in parent) is mitogen, parent
