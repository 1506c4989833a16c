"""ansible-runner runs of ``servekit up``: one fresh private data dir per run,
and what a failed run left on each node.

Why a fresh dir: ansible-runner's ``dump_artifacts`` (ansible_runner/utils/
__init__.py) writes ``env/cmdline``, ``env/envvars``, ``env/extravars``,
``env/settings`` ... into the private data dir only when the file is not
there yet, and ``RunnerConfig`` reads ``env/cmdline`` whenever a run passes
no cmdline of its own (ansible_runner/config/runner.py) and lets
``env/envvars`` override the envvars it was given (config/_base.py). With one
shared dir, ``servekit up --check`` followed by ``servekit up`` ran the
second as a dry run again, and one run's ``-e`` reached the next. Each run
now gets its own dir (and ``suppress_env_files``, so nothing is written to
``env/`` at all); the newest few are kept for their artifacts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RUNS_KEPT = 5
_RUN_DIR = re.compile(r"\d{8}T\d{6}\.\d{6}-\d+")

# The events the failure summary reads; the rest stay in the artifacts only.
_KEPT_EVENTS = frozenset({
    "playbook_on_play_start", "runner_on_ok", "runner_on_failed", "runner_on_unreachable",
    "runner_on_skipped", "playbook_on_stats",
})


def new_private_dir(base: Path, keep: int = RUNS_KEPT) -> Path:
    """A new, empty private data dir under ``base``; all but the newest ``keep`` runs are removed."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%f')}-{os.getpid()}"
    path.mkdir()
    runs = sorted(p for p in base.iterdir() if p.is_dir() and _RUN_DIR.fullmatch(p.name))
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def slim_event(event: dict) -> dict | None:
    """The parts of an ansible-runner event the summary needs (None: not needed)."""
    name = event.get("event")
    if name not in _KEPT_EVENTS:
        return None
    if event.get("slim"):
        return event
    data = event.get("event_data") or {}
    res = data.get("res") if isinstance(data.get("res"), dict) else {}
    slim = {key: data.get(key) for key in ("host", "task", "role", "play", "play_uuid", "ignore_errors")}
    slim["changed"] = bool(res.get("changed"))
    slim["msg"] = str(res.get("msg", "")).strip()
    if name == "playbook_on_stats":
        slim.update(failures=data.get("failures") or {}, dark=data.get("dark") or {},
                    processed=data.get("processed") or {})
    return {"event": name, "event_data": slim, "slim": True}


@dataclass
class EventLog:
    """ansible-runner event handler that keeps the slimmed events of one run."""

    events: list[dict] = field(default_factory=list)

    def __call__(self, event: dict) -> bool:
        slim = slim_event(event)
        if slim is not None:
            self.events.append(slim)
        return True  # keep the event in the artifacts too

    def failures(self) -> list[dict]:
        """The results that failed the run: per failed host its last failed or
        unreachable result (not one that a block rescued), in order."""
        return final_failures(self.events)


@dataclass
class NodeOutcome:
    host: str
    changed: list[str] = field(default_factory=list)
    failed_task: str | None = None
    unreachable: bool = False
    message: str = ""


def task_label(data: dict) -> str:
    """The task as ansible prints it: ``role : task``."""
    task = data.get("task") or "?"
    return f"{data['role']} : {task}" if data.get("role") else task


def final_failures(events: list[dict]) -> list[dict]:
    """Per host that ``playbook_on_stats`` counts as failed or unreachable, its last failed or
    unreachable result (slimmed), in the order they happened. Without a stats event (a
    cancelled run) every host with such a result counts."""
    slims = [s for s in (slim_event(e) for e in events) if s]
    stats = next((s["event_data"] for s in reversed(slims) if s["event"] == "playbook_on_stats"), None)
    last: dict[str, dict] = {}
    for slim in slims:
        data = slim["event_data"]
        if slim["event"] in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            last.pop(data["host"], None)
            last[data["host"]] = dict(data, unreachable=slim["event"] == "runner_on_unreachable")
    if stats is not None:
        failed = set(stats["failures"]) | set(stats["dark"])
        return [data for host, data in last.items() if host in failed]
    return list(last.values())


def node_outcomes(events: list[dict]) -> tuple[dict[str, NodeOutcome], bool]:
    """Per host: the tasks that reported changed, and where it failed (``final_failures``).

    ``events`` are ansible-runner events, full or as ``slim_event`` keeps
    them. Also returns whether the hosts that did not fail went on into a
    later play than the last failure (then finishing needs only the failed
    hosts).
    """
    slims = [s for s in (slim_event(e) for e in events) if s]
    outcomes: dict[str, NodeOutcome] = {}
    play_index: dict[str, int] = {}
    last_play: dict[str, int] = {}
    for slim in slims:
        name, data = slim["event"], slim["event_data"]
        if name == "playbook_on_play_start":
            play_index[data["play_uuid"]] = len(play_index)
            continue
        if not data.get("host"):
            continue
        node = outcomes.setdefault(data["host"], NodeOutcome(data["host"]))
        last_play[node.host] = max(last_play.get(node.host, -1), play_index.get(data["play_uuid"], -1))
        if name == "runner_on_ok" and data["changed"] and task_label(data) not in node.changed:
            node.changed.append(task_label(data))
    failures = final_failures(slims)
    for data in failures:
        node = outcomes[data["host"]]
        node.failed_task, node.unreachable, node.message = task_label(data), data["unreachable"], data["msg"]
    failed_play = max((play_index.get(d["play_uuid"], -1) for d in failures), default=None)
    went_on = failed_play is not None and any(
        play > failed_play for host, play in last_play.items() if not outcomes[host].failed_task)
    return outcomes, went_on


REVERT_SWITCH = ("the vllm stage already rolled the failed model switch back on every node "
                 "(see 'Rolled back to' above)")
REVERT_GENERAL = ("nothing is undone automatically (only a failed model switch: the vllm stage "
                  "rolls that back itself). To revert, put the previous inventory / registry values "
                  "back (e.g. git checkout -- inventory/<cluster>) and run the same command: every "
                  "stage writes its files from the inputs, so the nodes converge to the old settings")
PENDING_NOTE = ("a re-run finds the files above already written: a restart or reload they needed "
                "on a failed node may still be pending (check that node's servekit-* units)")


def failure_summary(events: list[dict], rerun: list[str], limit_flag: str = "--limit") -> str:
    """What a failed (or cancelled) run left on each node, and the commands that finish or revert it."""
    outcomes, went_on = node_outcomes(events)
    failed = [n for n in outcomes.values() if n.failed_task]
    lines = ["servekit: what this run changed on each node before it stopped:"]
    width = max((len(h) for h in outcomes), default=0)
    for node in sorted(outcomes.values(), key=lambda n: n.host):
        if node.host == "localhost" and not (node.changed or node.failed_task):
            continue  # the control node's checks: nothing to report
        if node.failed_task:
            how = "UNREACHABLE" if node.unreachable else "FAILED"
            status = f"{how} at '{node.failed_task}'" + (f": {node.message}" if node.message else "")
        else:
            status = "no failure"
        lines.append(f"  {node.host:<{width}}  {status}")
        lines.extend(f"  {'':<{width}}    changed: {task}" for task in node.changed)
        if not node.changed:
            lines.append(f"  {'':<{width}}    nothing changed")
    finish = list(rerun)
    if failed and went_on:
        # The other nodes went on to the end of the run: only the failed ones need it again.
        finish = _with_limit(finish, ",".join(sorted(n.host for n in failed)), limit_flag)
    lines.append(f"  to finish: {shlex.join(finish)}   (tasks already applied report ok)")
    switch_rolled_back = any("Rolled back to" in n.message for n in failed)
    lines.append(f"  to revert: {REVERT_SWITCH if switch_rolled_back else REVERT_GENERAL}")
    if any(n.changed for n in failed):
        lines.append(f"  note: {PENDING_NOTE}")
    return "\n".join(lines)


def _with_limit(words: list[str], limit: str, flag: str) -> list[str]:
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--limit", "-l"):
            skip = True
            continue
        if word.startswith("--limit="):
            continue
        out.append(word)
    return [*out, flag, limit]
