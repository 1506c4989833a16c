"""Cold start by phase: from the start of ``site.yml`` to the first completion, per phase.

Read from the ansible-runner events of one run (``servekit up`` passes them; the files under
``.cache/runner/<run>/artifacts/<id>/job_events/`` hold the same). A task lasts from its start
to the next task's start (the linear strategy runs one task at a time over all hosts), and
belongs to the phase of its play (the stage's role), except:

- the vllm stage's model staging (roles/vllm/tasks/model.yml): "model delivery";
- the vllm stage's readiness wait: up to its last attempt "vLLM load", the last attempt (the
  completion that answered) "first request". An attempt that fails is followed by a
  ``runner_retry`` event and then ``READY_DELAY_S`` of sleep, so the last attempt starts that
  long after the last retry event (the result itself is hidden by no_log when an API key is set);
- whatever runs after the first completion (watchdog, proxy, bench): "after", outside the cold start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Phases in the order site.yml runs them.
PREPARE, PACKAGES, MODEL, RAY, VLLM, FIRST, AFTER = (
    "prepare", "packages", "model delivery", "ray up", "vllm load", "first request", "after")
PHASES = (PREPARE, PACKAGES, RAY, MODEL, VLLM, FIRST, AFTER)
# The stage role of a play -> its phase, in site.yml's order (plays of other roles: PREPARE).
ROLE_PHASE = {"runtime": PACKAGES, "ray": RAY, "vllm": VLLM}
MODEL_TASKS = "roles/vllm/tasks/model.yml"
READY_TASK = "Wait for a real completion from the API"
# roles/vllm/tasks/start.yml: the readiness wait's `delay` (tests/unit/test_coldstart.py checks).
READY_DELAY_S = 10.0
_TASK_START = ("playbook_on_task_start", "playbook_on_handler_task_start")


@dataclass
class Span:
    play: str
    role: str
    task: str
    path: str
    start: float
    end: float = 0.0


def _time(event: dict) -> float:
    return datetime.fromisoformat(event["created"]).timestamp()


def _spans(events: list[dict]) -> tuple[list[Span], float | None, float | None]:
    """Every task's span, the run's start and end (epoch seconds)."""
    spans: list[Span] = []
    start = end = None
    for event in sorted(events, key=lambda e: e.get("counter", 0)):
        name, data = event.get("event"), event.get("event_data") or {}
        if name == "playbook_on_start":
            start = _time(event)
        elif name in _TASK_START:
            now = _time(event)
            if spans and not spans[-1].end:
                spans[-1].end = now
            spans.append(Span(data.get("play_uuid", ""), data.get("role") or "", data.get("task", ""),
                              data.get("task_path") or "", now))
        elif name == "playbook_on_stats":
            end = _time(event)
    if spans and not spans[-1].end:
        spans[-1].end = end or spans[-1].start
    if start is None and spans:
        start = spans[0].start
    return spans, start, end


def _first_completion(events: list[dict]) -> tuple[float, float] | None:
    """(start of the attempt that answered, its answer) of the readiness wait, or None."""
    retry = task_start = None
    for event in sorted(events, key=lambda e: e.get("counter", 0)):
        data = event.get("event_data") or {}
        if data.get("task") != READY_TASK:
            continue
        if event.get("event") in _TASK_START:
            retry, task_start = None, _time(event)
        elif event.get("event") == "runner_retry":
            retry = _time(event)
        elif event.get("event") == "runner_on_ok":
            answered = _time(event)
            attempt = min(retry + READY_DELAY_S, answered) if retry is not None else task_start
            return (answered if attempt is None else attempt), answered
    return None


def _play_phases(spans: list[Span]) -> dict[str, str]:
    """Each play's phase: that of the latest stage role among its tasks (the ray and vllm plays
    load the runtime role's settings first, the runtime play checks apt with the cluster role's)."""
    order = list(ROLE_PHASE)
    latest: dict[str, str] = {}
    for span in spans:
        if span.role in ROLE_PHASE and order.index(span.role) >= order.index(latest.get(span.play, order[0])):
            latest[span.play] = span.role
    return {play: ROLE_PHASE[role] for play, role in latest.items()}


def cold_start(events: list[dict]) -> dict:
    """Seconds per phase, the time to the first completion (None when the run made none: a dry
    run, a run without the vllm stage), and the run's total."""
    spans, start, end = _spans(events)
    seconds = dict.fromkeys(PHASES, 0.0)
    tasks: dict[str, dict[str, float]] = {phase: {} for phase in PHASES}
    ready = _first_completion(events)
    play_phase = _play_phases(spans)
    served = False

    def add(phase: str, label: str, begin: float, finish: float) -> None:
        if finish > begin:
            seconds[phase] += finish - begin
            tasks[phase][label] = tasks[phase].get(label, 0.0) + finish - begin

    for span in spans:
        label = f"{span.role} : {span.task}" if span.role else span.task
        if served:
            add(AFTER, label, span.start, span.end)
        elif ready and span.task == READY_TASK:
            add(VLLM, label, span.start, ready[0])
            add(FIRST, label, ready[0], ready[1])
            add(AFTER, label, ready[1], span.end)
            served = True
        elif MODEL_TASKS in span.path:
            add(MODEL, label, span.start, span.end)
        else:
            add(play_phase.get(span.play, PREPARE), label, span.start, span.end)
    total = (end or (spans[-1].end if spans else 0.0)) - (start or 0.0)
    return {
        "first_completion_s": round(ready[1] - start, 1) if ready and start is not None else None,
        "total_s": round(total, 1) if spans else 0.0,
        "phases": {phase: round(seconds[phase], 1) for phase in PHASES},
        "slowest": {phase: [[label, round(s, 1)] for label, s in
                            sorted(tasks[phase].items(), key=lambda item: item[1], reverse=True)[:3]]
                    for phase in PHASES if tasks[phase]},
        "started": datetime.fromtimestamp(start).astimezone().isoformat() if start else None,
    }


def format_table(report: dict) -> list[str]:
    """The phases as a short table; "after" is listed but outside the cold start."""
    first = report["first_completion_s"]
    head = (f"to the first completion: {first:.1f} s" if first is not None
            else "no completion in this run")
    lines = [f"COLD START BY PHASE ({head})"]
    for phase in PHASES:
        note = "   (after the first completion)" if phase == AFTER else ""
        lines.append(f"  {phase:<14} {report['phases'][phase]:8.1f} s{note}")
    lines.append(f"  {'total':<14} {report['total_s']:8.1f} s")
    return lines


def load_events(job_events: Path) -> list[dict]:
    """The events of one run from ansible-runner's ``artifacts/<id>/job_events`` folder."""
    return [json.loads(path.read_text()) for path in job_events.glob("*.json")]


def write_report(events: list[dict], dest: Path) -> dict:
    """``cold_start(events)`` written to ``dest`` (JSON), and returned."""
    report = cold_start(events)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(report, indent=2) + "\n")
    return report
