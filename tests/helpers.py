"""Running Ansible from the tests: one way to call ansible-playbook (and friends) on the project.

Every test that runs a play goes through ``ansible`` / ``ansible_playbook``:
this venv's tools, the project's ansible.cfg, output captured as text, a
timeout, never a shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(BIN / "ansible-playbook")


def ansible(tool: str, *args: object, project: Path = ROOT, env: Mapping[str, str] | None = None,
            unset: Iterable[str] = (), timeout: int = 180) -> subprocess.CompletedProcess:
    """Run ``tool`` (ansible-playbook, ansible-inventory, ...) in ``project`` with its ansible.cfg.

    The environment is this process's without the names in ``unset``, plus ``env``.
    """
    full_env = {k: v for k, v in os.environ.items() if k not in set(unset)}
    full_env.update(ANSIBLE_CONFIG=str(project / "ansible.cfg"), **(env or {}))
    return subprocess.run([str(BIN / tool), *map(str, args)], cwd=project, env=full_env,
                          capture_output=True, text=True, check=False, timeout=timeout)


def run(argv: Iterable[object], *, timeout: int = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` (paths allowed) without a shell, output captured as text, never raising on rc."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          timeout=timeout, **kwargs)


def ansible_playbook(*args: object, **kwargs) -> subprocess.CompletedProcess:
    """``ansible-playbook *args`` (see ``ansible`` for the keywords)."""
    return ansible("ansible-playbook", *args, **kwargs)


def write_play(path: Path, plays: list[dict]) -> Path:
    """Write ``plays`` as a playbook at ``path``."""
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def run_task(tmp_path: Path, task: dict, *flags: str) -> tuple[int, dict]:
    """Run one module task on localhost; return ansible-playbook's rc and the task's result."""
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
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), *flags, timeout=120,
                            env={"ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
                                 "ANSIBLE_LOCALHOST_WARNING": "false"})
    return proc.returncode, json.loads((tmp_path / "result.json").read_text())


def run_tasks(tmp_path: Path, tasks: list[dict], *flags: str) -> list[dict]:
    """Module tasks on localhost in one ansible-playbook run, in order; each task's result.

    Where ``run_task`` per case would start Ansible again for each: a task that
    fails does not stop the ones after it (its result has ``failed: true``,
    what makes ``run_task``'s rc non-zero), and the run itself must pass.
    """
    names = [f"__out{i}" for i in range(len(tasks))]
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [*(dict(task, register=name, ignore_errors=True)
                    for task, name in zip(tasks, names, strict=True)),
                  {"ansible.builtin.copy": {"content": "{{ [" + ", ".join(names) + "] | to_json }}",
                                            "dest": str(tmp_path / "results.json")},
                   "check_mode": False}],
    }]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), *flags, timeout=180,
                            env={"ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
                                 "ANSIBLE_LOCALHOST_WARNING": "false"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((tmp_path / "results.json").read_text())


def copy_lab_project(dest: Path) -> None:
    """The project's playbooks, roles and modules and the lab inventory's own group_vars
    (not the files `servekit lab up` writes) under ``dest``, for a lab inventory written there."""
    import shutil

    for item in ("site.yml", "ansible.cfg", "playbooks", "roles", "templates", "library", "module_utils",
                 "action_plugins", "strategy_plugins", "config", "collections"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    shutil.copytree(ROOT / "inventory/lab/group_vars/all", dest / "inventory/lab/group_vars/all",
                    ignore=shutil.ignore_patterns("lab.yml", "vault.yml"))


def write_bench_run(results_dir: Path, summary: dict) -> Path:
    """A `servekit.bench` results folder holding only ``summary`` (for the report's comparisons)."""
    from servekit.bench import report as bench_report

    run_dir = results_dir / summary["run"]
    run_dir.mkdir(parents=True)
    (run_dir / bench_report.SUMMARY_FILE).write_text(json.dumps(summary))
    return run_dir


class JsonHandler(BaseHTTPRequestHandler):
    """A loopback HTTP stand-in's base: JSON answers (``_send``) and no request log in pytest's output."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
