"""ansible-runner private dirs: old runs are pruned, running ones never."""

from __future__ import annotations

import subprocess
import sys

from servekit.runner import RUNS_KEPT, new_private_dir


def test_old_runs_are_pruned_to_the_newest(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for second in range(RUNS_KEPT + 3):
        (tmp_path / f"20260101T0000{second:02d}.000000-{dead}").mkdir()
    new_private_dir(tmp_path)
    assert len(list(tmp_path.iterdir())) == RUNS_KEPT


def test_a_run_still_in_progress_keeps_its_dir(tmp_path):
    """A `servekit up` that runs for minutes, while other servekit commands start
    runs of their own: pruning deleted its artifacts and ansible-runner died on
    FileNotFoundError '.../artifacts/<id>/status' (seen when unit tests ran next
    to a lab run in the same checkout)."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as long_run:
        try:
            running = tmp_path / f"20260101T000000.000000-{long_run.pid}"
            running.mkdir()
            for _ in range(RUNS_KEPT + 2):
                new_private_dir(tmp_path)
            assert running.is_dir(), "the running servekit's private dir was pruned"
            assert len(list(tmp_path.iterdir())) == RUNS_KEPT + 1
        finally:
            long_run.kill()
