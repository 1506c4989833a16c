"""The re-run's one-shot probes: installed packages (cluster) and writable sysctls (network).

Each replaced a module run per item (an apt or package run per install task,
a stat per sysctl); these check their answers against the host's own, read
independently here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml
from helpers import ROOT, ansible_playbook, write_play

ENV = {"ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_LOCALHOST_WARNING": "false"}


def _installed() -> set[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split("|", 1)[1] for line in out.splitlines() if line[:2] in ("ii", "hi")}


def test_installed_packages_come_from_one_query(tmp_path: Path) -> None:
    out = tmp_path / "installed.json"
    preview = {"ansible.builtin.include_role": {"name": "cluster", "tasks_from": "package_preview.yml"}}
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            preview,
            {"ansible.builtin.set_fact": {"__first": "{{ cluster_packages_installed }}"}},
            preview,  # a second install task's import: no second query
            {"ansible.builtin.copy": {
                "dest": str(out), "content": "{{ {'first': __first, 'query': __cluster_dpkg,"
                " 'missing': ['bash', 'servekit-no-such-package'] | difference(cluster_packages_installed)}"
                " | to_json }}"},
             "check_mode": False},
        ],
    }]
    # --check: python3-apt's install is a real run's; this checks the query only
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), "--check", env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = json.loads(out.read_text())
    assert set(got["first"]) == _installed()
    assert got["query"].get("skipped"), "the second import queried dpkg again"
    assert got["missing"] == ["servekit-no-such-package"]


def test_held_packages_count_as_installed(tmp_path: Path) -> None:
    # dpkg-query's own lines for the task's format: want, status, error flag, a space, the name
    lines = ["ii  bash", "hi  held-pkg", "rc  removed-pkg", "un  never-installed"]
    stub = tmp_path / "bin"
    stub.mkdir()
    quoted = " ".join(f"'{line}'" for line in lines)
    (stub / "dpkg-query").write_text(f"#!/bin/sh\nprintf '%s\\n' {quoted}\n")
    (stub / "dpkg-query").chmod(0o755)
    out = tmp_path / "installed.json"
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "environment": {"PATH": f"{stub}:{os.environ['PATH']}"},
        "tasks": [
            {"ansible.builtin.include_role": {"name": "cluster", "tasks_from": "package_preview.yml"}},
            {"ansible.builtin.copy": {"dest": str(out),
                                      "content": "{{ cluster_packages_installed | to_json }}"},
             "check_mode": False},
        ],
    }]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), "--check", env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert json.loads(out.read_text()) == ["bash", "held-pkg"], (
        "a package on hold (dpkg status 'hi') must count as installed, "
        "or its install task runs on every re-run")


def test_python3_apt_install_survives_a_skipped_first_import(tmp_path: Path) -> None:
    # RoCE imports the preview under `when: rdma_lossless`: skipped, its install task still
    # registers (a skipped result). Later imports must install python3-apt, once.
    tasks = yaml.safe_load((ROOT / "roles/cluster/tasks/package_preview.yml").read_text())
    install = tasks[0]
    assert install["name"].startswith("Install python3-apt")
    del install["ansible.builtin.command"]  # counted instead of run: the host stays as it is
    install["ansible.builtin.set_fact"] = {"__installs": "{{ __installs | default(0) | int + 1 }}"}
    preview = write_play(tmp_path / "preview.yml", tasks)
    out = tmp_path / "installs.json"
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            {"ansible.builtin.import_tasks": str(preview), "when": False},
            *[{"ansible.builtin.import_tasks": str(preview)}] * 3,
            {"ansible.builtin.copy": {"dest": str(out),
                                      "content": "{{ __installs | default(0) | to_json }}"}},
        ],
    }]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert int(json.loads(out.read_text())) == 1, (
        "python3-apt must be installed once per host and run, after a skipped first import too")


def test_sysctl_probe_matches_access(tmp_path: Path) -> None:
    tasks = yaml.safe_load((ROOT / "roles/network/tasks/sysctl.yml").read_text())
    probe, sort = tasks[0], tasks[1]
    assert probe["name"].startswith("Check which sysctls")
    sysctls = {"net.core.rmem_max": 1, "net.ipv4.tcp_rmem": "4096 87380 1", "net.servekit.absent": 1}
    out = tmp_path / "sorted.json"
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"network_sysctls": sysctls},
        "tasks": [probe, sort, {"ansible.builtin.copy": {
            "dest": str(out), "content": "{{ {'ok': __network_sysctl_ok, 'skipped': __network_sysctl_skipped}"
            " | to_json }}"}, "check_mode": False}],
    }]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = json.loads(out.read_text())
    want_ok = [s for s in sysctls if os.access("/proc/sys/" + s.replace(".", "/"), os.W_OK)]
    assert got["ok"] == want_ok
    assert got["skipped"]["net.servekit.absent"].startswith("not present")
    assert set(got["ok"]) | set(got["skipped"]) == set(sysctls)
