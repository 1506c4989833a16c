"""Cold start by phase (servekit/coldstart.py) on recorded lab runs (tests/fixtures/lab/site-events*.json):
a site.yml that served (mp executor, after `servekit down`) and one that failed before serving."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from servekit import coldstart
from servekit.coldstart import (
    AFTER,
    FIRST,
    MODEL,
    PHASES,
    PREPARE,
    RAY,
    READY_DELAY_S,
    READY_TASK,
    VLLM,
    cold_start,
    format_table,
)
from servekit.runner import report_cold_start

FIXTURES = ROOT / "tests" / "fixtures" / "lab"


def _events(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text())


def _t(event: dict) -> float:
    return datetime.fromisoformat(event["created"]).timestamp()


def _ready_events(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind and e["event_data"].get("task") == READY_TASK]


@pytest.fixture(scope="module")
def served() -> list[dict]:
    return _events("site-events.json")


def test_every_second_of_the_run_lands_in_exactly_one_phase(served):
    report = cold_start(served)
    first_task = min(_t(e) for e in served if e["event"] == "playbook_on_task_start")
    start = _t(next(e for e in served if e["event"] == "playbook_on_start"))
    assert sum(report["phases"].values()) == pytest.approx(report["total_s"] - (first_task - start), abs=0.5)
    assert set(report["phases"]) == set(PHASES)


def test_the_first_completion_is_the_readiness_answer(served):
    report = cold_start(served)
    start = _t(next(e for e in served if e["event"] == "playbook_on_start"))
    answered = _t(_ready_events(served, "runner_on_ok")[0])
    assert report["first_completion_s"] == pytest.approx(answered - start, abs=0.1)
    # the cold start is everything before the answer
    before = sum(report["phases"][p] for p in PHASES if p != AFTER)
    assert before == pytest.approx(report["first_completion_s"], abs=0.6)


def test_the_first_request_is_the_readiness_waits_last_attempt(served):
    report = cold_start(served)
    last_retry = _t(_ready_events(served, "runner_retry")[-1])
    answered = _t(_ready_events(served, "runner_on_ok")[0])
    assert report["phases"][FIRST] == pytest.approx(answered - last_retry - READY_DELAY_S, abs=0.1)
    # the failed attempts before it are loading
    assert report["slowest"][VLLM][0][0] == f"vllm : {READY_TASK}"


def test_without_retries_the_whole_wait_is_the_first_request(served):
    answered_at_once = [e for e in served if e["event"] != "runner_retry"]
    report = cold_start(answered_at_once)
    started = _t(_ready_events(served, "playbook_on_task_start")[0])
    answered = _t(_ready_events(served, "runner_on_ok")[0])
    assert report["phases"][FIRST] == pytest.approx(answered - started, abs=0.1)
    assert all(label != f"vllm : {READY_TASK}" for label, _ in report["slowest"][VLLM])


def test_tasks_land_in_their_stages_phase(served):
    report = cold_start(served)
    model_tasks = [label for label, _ in report["slowest"][MODEL]]
    assert model_tasks and all(label.startswith("vllm : ") for label in model_tasks)
    # the ray and vllm plays load the runtime role's settings first: still their own phase
    assert "ray : Wait until every node joined the Ray cluster with the devices vLLM needs" in dict(
        report["slowest"][RAY])
    for phase, rows in report["slowest"].items():
        for label, _ in rows:
            if label.startswith(("ray : ", "firewall : ", "network : ")):
                assert phase == (RAY if label.startswith("ray : ") else PREPARE), (label, phase)
    assert report["phases"][AFTER] > 0  # watchdog and proxy come after the answer


def test_a_run_that_failed_before_serving_has_no_first_completion():
    report = cold_start(_events("site-events-failed.json"))
    assert report["first_completion_s"] is None
    assert report["phases"][FIRST] == 0 and report["phases"][AFTER] == 0
    assert report["phases"][MODEL] > 0 and report["phases"][VLLM] > 0
    assert format_table(report)[0] == "COLD START BY PHASE (no completion in this run)"


def test_the_delay_matches_the_readiness_wait():
    tasks = yaml.safe_load((ROOT / "roles/vllm/tasks/start.yml").read_text())
    block = next(t for t in tasks if "block" in t)["block"]
    wait = next(t for t in block if t["name"] == READY_TASK)
    assert float(wait["delay"]) == READY_DELAY_S
    assert "no_log" in wait, "with the result visible, read the attempt's own elapsed instead"


def test_the_model_staging_tasks_are_where_the_report_looks():
    assert (ROOT / coldstart.MODEL_TASKS).is_file()


def test_servekit_up_prints_the_table_and_writes_the_json(served, tmp_path, capsys):
    dest = tmp_path / ".cache" / "coldstart.json"
    report_cold_start(served, dest)
    out = capsys.readouterr().out
    saved = json.loads(dest.read_text())
    first = saved["first_completion_s"]
    assert out.startswith(f"COLD START BY PHASE (to the first completion: {first:.1f} s)")
    for phase in PHASES:
        assert f"  {phase:<14} {saved['phases'][phase]:8.1f} s" in out
    assert str(dest) in out


def test_an_unwritable_report_never_fails_the_run(served, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    report_cold_start(served, blocker / "coldstart.json")
    assert "no cold-start report" in capsys.readouterr().err


def test_loading_ansible_runner_job_events(tmp_path, served):
    folder = tmp_path / "job_events"
    folder.mkdir()
    for event in served:
        (folder / f"{event['counter']}-x.json").write_text(json.dumps(event))
    assert coldstart.cold_start(coldstart.load_events(Path(folder))) == cold_start(served)
