"""Per-task timings at the end of a run (what ansible.posix's profile_tasks does; servekit's
venv carries ansible-core only). ``servekit up`` enables it (servekit/runner.py)."""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: servekit_timings
type: aggregate
short_description: the slowest tasks of the run and the total, at the end
description:
  - Times every task from its start to the next task's start (all hosts together)
    and prints the slowest ones and the total when the playbook ends.
options:
  top:
    description: How many tasks to list.
    type: int
    default: 15
    env:
      - name: SERVEKIT_TIMINGS_TOP
"""


def slowest(durations: list[tuple[str, float]], top: int) -> list[tuple[str, float]]:
    """The ``top`` longest (task, seconds), longest first; a task name seen twice adds up."""
    total: dict[str, float] = {}
    for name, seconds in durations:
        total[name] = total.get(name, 0.0) + seconds
    return sorted(total.items(), key=lambda item: item[1], reverse=True)[:top]


def format_timings(durations: list[tuple[str, float]], top: int) -> list[str]:
    rows = slowest(durations, top)
    if not rows:
        return []
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {seconds:8.1f}s" for name, seconds in rows]
    lines.append(f"{'total':<{width}}  {sum(s for _, s in durations):8.1f}s")
    return lines


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "servekit_timings"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._durations: list[tuple[str, float]] = []
        self._current: tuple[str, float] | None = None

    def _close(self) -> None:
        if self._current:
            name, started = self._current
            self._durations.append((name, time.monotonic() - started))
            self._current = None

    def _start(self, task) -> None:
        self._close()
        # get_name() already reads "role : task" for a role's task
        self._current = (task.get_name().strip(), time.monotonic())

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._start(task)

    def v2_playbook_on_stats(self, stats) -> None:
        self._close()
        lines = format_timings(self._durations, int(self.get_option("top")))
        if lines:
            self._display.banner("TASK TIMINGS (slowest first)")
            for line in lines:
                self._display.display(line)
