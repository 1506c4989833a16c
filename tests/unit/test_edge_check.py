""".ci/edge-check (issue 15 item 4) runs on the lab; here: valid bash, bad settings refused first."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import ROOT

SCRIPT = ROOT / ".ci" / "edge-check"


def test_edge_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.parametrize(("env", "message"), [
    ({"EDGE_RATE": "0"}, "EDGE_RATE=0; allowed: a whole number >= 1"),
    ({"EDGE_BURST": "x"}, "EDGE_BURST=x; allowed: a whole number >= 1"),
    ({"EDGE_REQUESTS": "10"}, "EDGE_REQUESTS=10; allowed: more than EDGE_RATE + EDGE_BURST + 5 (12)"),
    ({"EDGE_REQUESTS": "500"}, "at most 200 (a bounded burst)"),
])
def test_bad_burst_settings_are_refused_first(env, message):
    proc = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
