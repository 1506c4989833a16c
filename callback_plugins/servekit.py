"""servekit's stdout callback: ansible's default, with waits a person can follow.

A task that retries (``until``/``retries``/``delay``: vLLM readiness, Ray
join, the proxy check) prints, per retry, one line with the time waited, the
most it may still wait, and the latest answer (the HTTP status and message
of a ``uri`` probe, the last line a ``command`` printed) instead of
"FAILED - RETRYING: ... (N retries left)". ``servekit up`` selects it
(servekit/runner.py); ansible-runner wraps it as its ORIGINAL_STDOUT_CALLBACK.
"""

from __future__ import annotations

import time

from ansible.plugins.callback.default import CallbackModule as DefaultCallback

DOCUMENTATION = r"""
name: servekit
type: stdout
short_description: ansible's default output, with one progress line per retry of a wait
description:
  - Like the default callback, but a retrying task prints elapsed and remaining time
    and the latest answer instead of FAILED - RETRYING.
extends_documentation_fragment:
  - default_callback
requirements:
  - set as stdout callback (servekit up does)
"""


def latest_answer(result: dict) -> str:
    """What the last try got: a uri probe's status and message, or a command's last output line."""
    if "status" in result and "url" in result:
        status = result.get("status")
        msg = str(result.get("msg") or "").split("\n")[0]
        return f"HTTP {status}" + (f": {msg}" if msg and status != 200 else "")
    for stream in ("stderr", "stdout"):
        lines = [line for line in str(result.get(stream) or "").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return str(result.get("msg") or "").split("\n")[0]


def progress_line(task: str, host: str, *, attempts: int, retries: int, delay: float, elapsed: float,
                  answer: str) -> str:
    """One line per retry: what is waited for, how long so far, how long at most, the latest answer."""
    remaining = max(0, retries - attempts) * delay
    text = (f"  waiting: {task} [{host}] {elapsed:.0f}s elapsed, at most {remaining:.0f}s left "
            f"(try {attempts} of {retries})")
    if answer:
        text += f" - {answer[:160]}"
    return text


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "servekit"

    def __init__(self) -> None:
        super().__init__()
        self._wait_started: dict[tuple[str, str], float] = {}

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._wait_started.clear()
        super().v2_playbook_on_task_start(task, is_conditional)

    def v2_runner_retry(self, result) -> None:
        host, task = result._host.get_name(), result._task
        # the first try ran before its first retry callback: count from one delay back
        delay = float(task.delay or 0)
        started = self._wait_started.setdefault((host, task._uuid), time.monotonic() - delay)
        res = result._result
        line = progress_line(task.get_name().strip(), host, attempts=int(res.get("attempts", 0)),
                             retries=int(res.get("retries", 0)), delay=delay,
                             elapsed=time.monotonic() - started,
                             answer="" if res.get("_ansible_no_log") or task.no_log else latest_answer(res))
        self._display.display(line, color="dark gray")
