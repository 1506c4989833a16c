"""Provisioning benchmark (servekit/bench/provision.py): reading real ansible-playbook output, the summary.

The logs in tests/fixtures/provision are real: ansible-core 2.19 with servekit's
stdout callback and servekit_timings (what `servekit up` selects) running a
four-task playbook against two local-connection hosts named like the lab's
nodes, once (changed=1 each), again coloured (ANSIBLE_FORCE_COLOR, changed=0),
and once failing coloured. tests/fixtures/device-h100/site-stages.log is a
real site.yml run on a GPU node. The lab itself is not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from servekit.bench import provision as pb

FIXTURES = ROOT / "tests" / "fixtures" / "provision"


def test_recap_of_a_first_run_counts_the_changes_per_node():
    text = (FIXTURES / "recap-first.log").read_text()
    recap = pb.parse_recap(text)
    assert recap == {host: {"ok": 3, "changed": 1, "unreachable": 0, "failed": 0, "skipped": 1, "rescued": 0,
                            "ignored": 1} for host in ("lab-head", "lab-worker-1")}
    assert pb.recap_totals(recap) == {"ok": 6, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 2,
                                      "rescued": 0, "ignored": 2, "hosts": 2}


def test_recap_of_a_coloured_rerun_and_of_a_failure():
    text = (FIXTURES / "recap-rerun-color.log").read_text()
    assert "\x1b[" in text  # the colours are really there
    totals = pb.recap_totals(pb.parse_recap(text))
    assert totals["changed"] == 0 and totals["ok"] == 6 and totals["hosts"] == 2
    failed = pb.parse_recap((FIXTURES / "recap-failed-color.log").read_text())
    assert failed == {"localhost": {"ok": 0, "changed": 0, "unreachable": 0, "failed": 1, "skipped": 0,
                                    "rescued": 0, "ignored": 0}}


def test_recap_of_a_real_site_run_leaves_the_control_node_out_of_the_totals():
    recap = pb.parse_recap((ROOT / "tests/fixtures/device-h100/site-stages.log").read_text())
    assert set(recap) == {"gpu-node", "localhost"}
    totals = pb.recap_totals(recap)
    assert totals["hosts"] == 1 and totals["ok"] == 28 and totals["skipped"] == 18


def test_no_recap_is_empty_and_the_last_recap_wins():
    assert pb.parse_recap("PLAY [x] ***\nTASK [y] ***\nok: [h]\n") == {}
    first = (FIXTURES / "recap-first.log").read_text()
    rerun = (FIXTURES / "recap-rerun-color.log").read_text()
    assert pb.recap_totals(pb.parse_recap(first + rerun))["changed"] == 0


def test_timings_block_from_the_servekit_timings_callback():
    timings = pb.parse_timings((FIXTURES / "recap-first.log").read_text())
    assert timings["total_s"] == 3.8
    assert timings["slowest"][0] == ("Write a file (changed the first time)", 1.9)
    assert [name for name, _ in timings["slowest"]] == [
        "Write a file (changed the first time)", "Read something (ok)", "An ignored failure", "Skipped task"]
    assert pb.parse_timings((FIXTURES / "recap-rerun-color.log").read_text())["total_s"] == 4.2
    assert pb.parse_timings("PLAY RECAP ***\n") is None


def test_recap_command_prints_json():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "servekit.bench.provision", "recap",
                           str(FIXTURES / "recap-first.log")], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    assert json.loads(proc.stdout)["totals"]["changed"] == 2


@pytest.mark.parametrize(("text", "message"), [
    ("nopipe", "allowed form: NAME:ANSIBLE_SETTING=VALUE"),
    ("default:ANSIBLE_FORKS=5", "not 'default'"),
    ("x:FORKS=5", "'FORKS=5' is not ANSIBLE_SETTING=VALUE"),
    ("x:ANSIBLE_FORKS", "'ANSIBLE_FORKS' is not ANSIBLE_SETTING=VALUE"),
    ("x:ANSIBLE_STDOUT_CALLBACK=json", "ANSIBLE_STDOUT_CALLBACK is set by servekit up itself"),
])
def test_bad_variants_name_the_allowed_form(text, message):
    with pytest.raises(ValueError, match=message):
        pb.parse_variant(text)


def test_variants_and_worker_counts():
    assert pb.parse_variant("nopipe:ANSIBLE_PIPELINING=false,ANSIBLE_FORKS=5") == (
        "nopipe", {"ANSIBLE_PIPELINING": "false", "ANSIBLE_FORKS": "5"})
    assert pb.parse_variant("cp:ANSIBLE_SSH_ARGS=-o ControlMaster=auto -o ControlPersist=600s") == (
        "cp", {"ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=600s"})
    assert pb.parse_workers("1,3,7") == [1, 3, 7] and pb.parse_workers("1 3") == [1, 3]
    for bad in ("0", "9", "x", ""):
        with pytest.raises(ValueError, match="allowed: worker counts 1 to 8"):
            pb.parse_workers(bad)
    with pytest.raises(ValueError, match="'a' given twice"):
        pb._variants(["a:ANSIBLE_FORKS=1", "a:ANSIBLE_FORKS=2"])


def test_host_room_for_a_lab():
    assert pb.room_for(2, free_disk_gib=60, available_memory_gib=20, serving=True) == []
    problems = pb.room_for(8, free_disk_gib=20, available_memory_gib=10, serving=True)
    assert problems[0].startswith("8 nodes need about 32 GiB of disk") and "20.0 GiB free" in problems[0]
    assert problems[1].startswith("8 nodes need about 14 GiB of memory")
    assert pb.room_for(8, free_disk_gib=40, available_memory_gib=10, serving=False) == []
    assert pb.meminfo_available_gib("MemTotal: 24000000 kB\nMemAvailable:   20971520 kB\n") == 20.0


def _run(variant, rnd, wall, changed=0, rc=0):
    return {"variant": variant, "round": rnd, "rc": rc, "wall_s": wall, "totals": {"changed": changed}}


def test_summary_medians_targets_and_table():
    sizes = [
        {"workers": 1, "nodes": 2, "lab_up_s": 40.0,
         "cold": {"rc": 0, "wall_s": 900.0, "totals": {"changed": 180},
                  "timings": {"slowest": [("runtime : pip", 400.0)]}},
         "reruns": [_run("default", 1, 50.0), _run("nopipe", 1, 80.0), _run("default", 2, 44.0),
                    _run("nopipe", 2, 90.0), _run("default", 3, 47.0), _run("nopipe", 3, 85.0, changed=1)]},
        {"workers": 7, "nodes": 8, "lab_up_s": 120.0,
         "cold": {"rc": 0, "wall_s": 2000.0, "totals": {"changed": 700}},
         "reruns": [_run("default", 1, 80.0), _run("default", 2, 75.0), _run("default", 3, 0.5, rc=1)]},
    ]
    rows = pb.summarize(sizes)
    assert [(r["nodes"], r["variant"]) for r in rows] == [(2, "default"), (2, "nopipe"), (8, "default")]
    assert rows[0]["rerun"]["median"] == 47.0 and rows[0]["rerun"]["spread"] == pytest.approx(6 / 47)
    assert rows[1]["rerun_changed"] == [0, 0, 1]
    assert rows[2]["rerun"]["n"] == 2 and rows[2]["rerun_failed"] == 1  # a failed re-run is not timed
    assert pb.targets(rows) == ["2-node re-run 47 s (median): met (target under 60 s)",
                                "8-node re-run / 2-node re-run = 1.65: NOT met (target at most 1.5)"]
    doc = {"started": "2026-11-28T10:00:00+00:00", "machine": "AMD EPYC, 2 cores, 24 GiB", "tags": None,
           "reruns": 3, "variants": {"nopipe": {"ANSIBLE_PIPELINING": "false"}}, "sizes": sizes, "errors": []}
    table = pb.format_markdown(doc)
    assert "| 2 | default | 40 | 900 | 180 | 47.0 [44.0-50.0] | 12.8% | 0, 0, 0 | 0 |" in table
    assert "| 8 | default | 120 | 2000 | 700 | 77.5 [75.0-80.0] | 6.5% | 0, 0, 0 | 1 |" in table
    assert "- `nopipe`: `ANSIBLE_PIPELINING=false`" in table
    assert "- 400.0 s runtime : pip" in table


def test_provision_script_is_valid_bash_and_refuses_a_leftover_marker(tmp_path):
    script = ROOT / "benchmarks" / "provision.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    results = tmp_path / "results"
    results.mkdir()
    (results / ".lab-owned").write_text("1\n")
    venv = os.path.dirname(os.path.dirname(sys.executable))  # the venv that runs the tests
    proc = subprocess.run(["bash", str(script), "--results-dir", str(results)], capture_output=True,
                          text=True, env={**os.environ, "VENV": venv},
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "an earlier run died with its lab up" in proc.stderr
    assert (results / ".lab-owned").exists()  # never removed (nor the lab taken down) on a guess
