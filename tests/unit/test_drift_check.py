""".ci/drift-check runs on the lab; here, with a fake `servekit` and `ansible-playbook` on PATH:
what it asks of the nodes when the check fails and when the lab is repaired.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT

SAVED = "/var/tmp/servekit-drift-check.settings"
SETTINGS = "/etc/default/prometheus-node-exporter"
UNIT = "prometheus-node-exporter.service"


def _recap(changed: int) -> str:
    return "".join(f"{node} : ok=9 changed={changed} unreachable=0 failed=0 skipped=0\n"
                   for node in ("lab-head", "lab-worker-1"))


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _drift_check(tmp_path: Path, recaps: list[str | None]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the script in a copy of .ci. The Nth ansible-playbook run prints ``recaps[N]`` after
    PLAY RECAP, or fails where it is None. Returns the run and its `servekit lab ssh` calls,
    each as 'NODE: COMMAND'."""
    checkout, bin_dir, calls = tmp_path / "checkout", tmp_path / "bin", tmp_path / "calls"
    (checkout / ".ci").mkdir(parents=True)
    bin_dir.mkdir()
    for name in ("drift-check", "lib.sh", "assert-unchanged"):
        shutil.copy(ROOT / ".ci" / name, checkout / ".ci" / name)
    for n, recap in enumerate(recaps):
        if recap is not None:
            (tmp_path / f"recap{n}").write_text("PLAY RECAP ***\n" + recap)
    _executable(bin_dir / "servekit", f"""#!/bin/sh
[ "$1 $2" = "lab vault-path" ] && {{ echo /fake/vault; exit 0; }}
[ "$1 $2" = "lab ssh" ] || exit 9
printf '%s: %s\\n' "$3" "$4" >> {calls}
case "$4" in
  *sha256sum*) echo "0123abcd  {SETTINGS}" ;;
  *dpkg-query*) printf 'ii ' ;;
esac
""")
    _executable(bin_dir / "ansible-playbook", f"""#!/bin/sh
n=$(cat {tmp_path}/runs 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/runs
cat {tmp_path}/recap$n 2>/dev/null || {{ echo 'fatal: [lab-worker-1]: FAILED!'; exit 2; }}
""")
    proc = subprocess.run([str(checkout / ".ci" / "drift-check")], cwd=checkout, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("recaps", [[None], [_recap(0)]], ids=["repair-run-fails", "nothing-repaired"])
def test_a_failed_check_undoes_the_drift_by_hand(tmp_path, recaps):
    proc, calls = _drift_check(tmp_path, recaps)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    edit = next(i for i, call in enumerate(calls) if "edited by hand" in call)
    undo = calls[edit + 1:]
    assert any(call.startswith("lab-worker-1: ") and "apt-get install" in call for call in undo), (
        f"node_exporter not installed again on the worker after the failed check: {undo}")
    assert any(call.startswith("lab-head: ") and f"cp -p {SAVED} {SETTINGS}" in call
               and f"systemctl start {UNIT}" in call for call in undo), (
        f"the head's settings and unit not put back after the failed check: {undo}")


def test_a_repaired_lab_is_left_as_the_repair_made_it(tmp_path):
    proc, calls = _drift_check(tmp_path, [_recap(1), _recap(0)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [call for call in calls if "apt-get install" in call or f"cp -p {SAVED}" in call], calls
    assert calls[-1] == f"lab-head: rm -f {SAVED}", calls
