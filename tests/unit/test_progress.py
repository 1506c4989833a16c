"""servekit's callbacks (callback_plugins/): a progress line per retry of a wait, per-task timings.

Run for real: ansible-playbook on localhost with the environment `servekit up`
gives it (servekit.runner.up_env), a task that retries until its third try,
and a command whose last output line must show in the progress lines.
"""

from __future__ import annotations

import re

import pytest
from helpers import ROOT, ansible_playbook, write_play

from servekit.runner import up_env

WAIT_PLAY = [{
    "hosts": "localhost", "connection": "local", "gather_facts": False,
    "tasks": [
        {"name": "Wait for a unit to come up",
         "ansible.builtin.command": {"argv": ["sh", "-c", "echo 'INFO loading weights 42%' >&2; exit 1"]},
         "register": "probe", "until": "probe.attempts | default(0) >= 3", "retries": 5, "delay": 1,
         "changed_when": False, "failed_when": False},
        {"name": "A quick task", "ansible.builtin.debug": {"msg": "done"}},
    ],
}]


def _run(tmp_path, env: dict[str, str]):
    play = write_play(tmp_path / "wait.yml", WAIT_PLAY)
    return ansible_playbook(play, env={k: v for k, v in env.items() if k != "ANSIBLE_CONFIG"},
                            timeout=120)


@pytest.fixture(scope="module")
def up_run(tmp_path_factory):
    """One run with `servekit up`'s environment (colour off, to match lines), read by two tests."""
    env = dict(up_env(ROOT), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return _run(tmp_path_factory.mktemp("up"), env)


def test_a_wait_shows_elapsed_remaining_and_the_last_line_instead_of_retrying(up_run):
    proc = up_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "FAILED - RETRYING" not in proc.stdout
    waits = re.findall(r"waiting: Wait for a unit to come up \[localhost\] (\d+)s elapsed, "
                       r"at most (\d+)s left \(try (\d) of 6\) - INFO loading weights 42%", proc.stdout)
    # retries 5 = six tries in all, one delay (1 s) apart
    assert [(int(left), int(n)) for _, left, n in waits] == [(5, 1), (4, 2)], proc.stdout
    assert int(waits[1][0]) >= 1


def test_timings_list_the_slowest_task_first_and_the_total(up_run):
    proc = up_run
    tail = proc.stdout.split("TASK TIMINGS (slowest first)")[1].strip().splitlines()[1:]
    names = [line.rsplit(None, 1)[0].strip() for line in tail]
    assert names[:2] == ["Wait for a unit to come up", "A quick task"], tail
    assert names[-1] == "total"
    assert float(tail[0].split()[-1].rstrip("s")) >= 2.0  # two delays of 1 s


def test_the_default_output_is_what_plain_ansible_prints(tmp_path):
    proc = _run(tmp_path, {})
    assert "FAILED - RETRYING" in proc.stdout and "TASK TIMINGS" not in proc.stdout
