"""``servekit up``'s ansible-runner run: a fresh private data dir per run, live
events, Ctrl+C that stops the whole process tree, and what a failed run left
on each node.

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

import contextlib
import os
import re
import shlex
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from servekit.project import state_dir
from servekit.vault import vault_env

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
# Roles that only check input on the control node (the validate stage and the
# example-inventory guard): their failures are bad input (exit 2), whatever
# the play is called.
INPUT_ROLES = frozenset({"cluster", "validate"})

RUNS_KEPT = 5
_RUN_DIR = re.compile(r"\d{8}T\d{6}\.\d{6}-\d+")

# The events the failure summary reads; the rest stay in the artifacts only.
_KEPT_EVENTS = frozenset({
    "playbook_on_play_start", "runner_on_ok", "runner_on_failed", "runner_on_unreachable",
    "runner_on_skipped", "playbook_on_stats",
})


def _run_alive(run: Path) -> bool:
    """Whether the servekit process that made ``run`` (its name ends in the PID) still runs."""
    pid = int(run.name.rsplit("-", 1)[1])
    return pid != os.getpid() and psutil.pid_exists(pid)


def new_private_dir(base: Path, keep: int = RUNS_KEPT) -> Path:
    """A new, empty private data dir under ``base``; all but the newest ``keep`` runs are
    removed, except those of servekit processes still running: a `servekit status` next
    to a long `servekit up` must not delete the directory that run writes its events to."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%f')}-{os.getpid()}"
    path.mkdir()
    runs = sorted(p for p in base.iterdir() if p.is_dir() and _RUN_DIR.fullmatch(p.name))
    for old in runs[:-keep]:
        if not _run_alive(old):
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


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    """What ``servekit up`` was asked for (the CLI flags)."""

    inventory: str | None = None
    tags: str | None = None
    skip_tags: str | None = None
    limit: str | None = None
    check: bool = False
    diff: bool = False
    extra_vars: Sequence[str] = ()
    verbose: int = 0

    def cmdline(self) -> str:
        """ansible-playbook flags that ansible-runner has no parameter for."""
        words: list[str] = []
        if self.check:
            words += ["--check", "--diff"]
        elif self.diff:
            words.append("--diff")
        if self.skip_tags:
            words += ["--skip-tags", self.skip_tags]
        for extra in self.extra_vars:
            words += ["--extra-vars", extra]
        return shlex.join(words)

    def rerun_words(self, model: str | None = None) -> list[str]:
        """The ``servekit up`` command that repeats this run for real (no --check)."""
        words = ["servekit", "up"]
        if self.inventory is not None:
            words += ["-i", self.inventory]
        for flag, value in (("--tags", self.tags), ("--skip-tags", self.skip_tags),
                            ("--limit", self.limit), ("--model", model)):
            if value:
                words += [flag, value]
        for extra in self.extra_vars:
            words += ["-e", extra]
        if self.diff:
            words.append("--diff")
        return words


def ansible_env(root: Path, inventory: Path | None = None) -> dict[str, str]:
    """Environment of the ansible commands servekit runs for the project at ``root``.

    On the lab's inventory it names the lab's vault password file unless the
    caller's environment names one (so neither ``servekit up`` nor ``ask``
    needs ANSIBLE_VAULT_PASSWORD_FILE exported for the lab): the lab registers
    it (servekit/vault.py).
    """
    # ansible-playbook comes from the same environment as servekit, even
    # when that venv is not activated.
    bindir = str(Path(sys.executable).parent)
    state = state_dir(root)
    env = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        # the roles' control-node files (cluster_control_dir) and ansible.cfg's facts cache:
        # outside site-packages for an installed wheel (servekit/project.py: state_dir)
        "SERVEKIT_STATE_DIR": str(state),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts"),
    }
    # ansible-runner gives ansible-playbook a pty, so ansible colours its
    # output even when ours goes to a log file: colour only for a terminal.
    env["ANSIBLE_FORCE_COLOR" if sys.stdout.isatty() else "ANSIBLE_NOCOLOR"] = "1"
    if inventory is not None:
        env.update(vault_env(root, inventory))
    return env


def up_env(root: Path, inventory: Path | None = None) -> dict[str, str]:
    """``servekit up``'s environment: ``ansible_env`` plus servekit's callbacks (callback_plugins/):
    a progress line per retry of a wait instead of FAILED - RETRYING, and per-task timings at the end
    (ansible's own output where the project has no callback_plugins/)."""
    if not (root / "callback_plugins" / "servekit.py").is_file():
        return ansible_env(root, inventory)
    return {**ansible_env(root, inventory), "ANSIBLE_CALLBACK_PLUGINS": str(root / "callback_plugins"),
            "ANSIBLE_STDOUT_CALLBACK": "servekit", "ANSIBLE_CALLBACKS_ENABLED": "servekit_timings"}


def run_site(root: Path, inventory: Path, options: UpOptions) -> int:
    """Run ``root/site.yml`` on ``inventory``; the exit code of ``servekit up``."""
    import ansible_runner  # slow import: only for the command that needs it

    cancel = threading.Event()
    log = EventLog()
    # Every setting of this run is passed here and nowhere else: a fresh
    # private data dir, and no env/ files (see the module docstring).
    private_dir = new_private_dir(state_dir(root) / "runner")
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(private_dir),
        project_dir=str(root),
        playbook=str(root / "site.yml"),
        inventory=str(inventory),
        tags=options.tags or None,
        # The validate stage and the example-inventory guard run on the
        # control node: a --limit to some nodes must not skip them.
        limit=f"{options.limit},localhost" if options.limit else None,
        cmdline=options.cmdline() or None,
        verbosity=options.verbose or None,
        envvars=up_env(root, inventory),
        suppress_env_files=True,
        cancel_callback=cancel.is_set,
        event_handler=log,
        quiet=False,
    )
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        print("\nservekit: cancelling the playbook run...", file=sys.stderr)
        # ansible-runner stops ansible-playbook only; the module processes it
        # started (a long command, a wait loop) would live on as orphans.
        terminate_descendants(os.getpid())
        cancel.set()
        thread.join()
    rerun = options.rerun_words(os.environ.get("MODEL_NAME"))
    if cancel.is_set() or runner.status == "canceled":
        print("servekit: cancelled", file=sys.stderr)
        if not options.check:
            print(failure_summary(log.events, rerun), file=sys.stderr)
        return EXIT_CANCELLED
    if runner.rc == 0:
        if not options.check:
            report_cold_start(list(runner.events), state_dir(root) / "coldstart.json")
        return 0
    return report_failure(log, runner.rc, private_dir / "artifacts", options.check, rerun)


def report_cold_start(events: list[dict], dest: Path) -> None:
    """The run's time per phase to the first completion, printed and written to ``dest``."""
    from servekit.coldstart import format_table, write_report

    try:
        report = write_report(events, dest)
    except (OSError, ValueError, KeyError) as exc:  # a report, never a reason to fail the run
        print(f"servekit: no cold-start report ({exc})", file=sys.stderr)
        return
    print("\n".join([*format_table(report), f"  (written to {dest})"]))


def terminate_descendants(pid: int, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every descendant of ``pid``, SIGKILL those alive after ``grace_s``; their pids."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [child.pid for child in children]


def is_input_failure(failure: dict) -> bool:
    """Whether a failed result is bad input: it came from a role that only checks input."""
    return failure.get("role") in INPUT_ROLES


def report_failure(log: EventLog, rc: int | None, artifacts: Path, check: bool,
                   rerun: list[str]) -> int:
    """Bad input caught on the control node exits 2 like any bad input; else 1, with what
    the run changed on each node before it stopped and how to finish or revert it."""
    failures = log.failures()
    first = failures[0] if failures else {}
    message = first.get("msg", "").replace("\n", " ")
    if first and is_input_failure(first):
        print(f"servekit: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    where = f" on {first.get('host')} at '{task_label(first)}'" if first else ""
    print(f"servekit: playbook failed{where} (ansible-playbook rc {rc}); "
          f"events under {artifacts}", file=sys.stderr)
    if check:
        print("servekit: dry run: nothing on the nodes was changed", file=sys.stderr)
    else:
        print(failure_summary(log.events, rerun), file=sys.stderr)
    return 1


def run_playbook(root: Path, inventory: Path, playbook: str, extravars: dict | None = None,
                 *, quiet: bool = False, limit: str | None = None) -> int:
    """Run ``root/<playbook>`` (a day-2 playbook: status, down) on ``inventory``; its rc.

    Same fresh private data dir and environment as ``run_site``; ``quiet`` keeps
    ansible's output in the artifacts only (the caller prints what it read).
    """
    import ansible_runner

    private_dir = new_private_dir(state_dir(root) / "runner")
    try:
        result = ansible_runner.run(
            private_data_dir=str(private_dir), project_dir=str(root), playbook=str(root / playbook),
            inventory=str(inventory), extravars=extravars or {}, limit=limit, envvars=ansible_env(root),
            suppress_env_files=True, quiet=quiet)
    except KeyboardInterrupt:
        terminate_descendants(os.getpid())
        return EXIT_CANCELLED
    return result.rc if result.rc is not None else 1


def run_command(root: Path, inventory: Path, hosts: str, argv: Sequence[str]) -> dict[str, dict]:
    """``argv`` on ``hosts`` as an ad-hoc ``command`` task (no shell); per host its result
    (``stdout``, ``rc``, or ``unreachable``/``msg``)."""
    import ansible_runner

    found: dict[str, dict] = {}

    def keep(event: dict) -> bool:
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            res = data.get("res") or {}
            found[data.get("host")] = {"stdout": res.get("stdout", ""), "rc": res.get("rc"),
                                       "msg": str(res.get("msg", "")),
                                       "unreachable": event["event"] == "runner_on_unreachable"}
        return False  # nothing in the artifacts: a follow loop runs this every few seconds

    private_dir = new_private_dir(state_dir(root) / "runner")
    ansible_runner.run(private_data_dir=str(private_dir), inventory=str(inventory), host_pattern=hosts,
                       module="ansible.builtin.command", module_args=shlex.join(argv),
                       envvars=ansible_env(root), suppress_env_files=True, quiet=True,
                       event_handler=keep)
    shutil.rmtree(private_dir, ignore_errors=True)
    return found
