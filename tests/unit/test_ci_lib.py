""".ci/lib.sh, the .ci scripts' shared preamble and helpers: what runs without a lab.

The scripts themselves need the lab (.ci/run); here lib.sh is sourced by a stub
script in a copy of the .ci folder, with a fake `servekit` on PATH.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT

LIB = ROOT / ".ci" / "lib.sh"
BASH_SCRIPTS = sorted(p for p in (ROOT / ".ci").iterdir()
                      if p.is_file() and p.read_text().startswith("#!/usr/bin/env bash"))
SOURCE_LINE = 'source "$(dirname "$0")/lib.sh"'


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _checkout(tmp_path: Path, body: str, *, vllm_unit_on: str = "") -> Path:
    """A checkout with .ci/lib.sh and .ci/probe (sourcing it, then BODY), and a fake servekit in
    bin/: `lab vault-path` prints /fake/vault, `lab ssh NODE test -f ...` succeeds on VLLM_UNIT_ON."""
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    (checkout / ".ci" / "lib.sh").write_text(LIB.read_text())
    _executable(checkout / ".ci" / "probe", f"#!/usr/bin/env bash\n{SOURCE_LINE}\n{body}\n")
    (tmp_path / "bin").mkdir()
    _executable(tmp_path / "bin" / "servekit", f"""#!/bin/sh
case "$1 $2" in
  "lab vault-path") echo /fake/vault ;;
  "lab ssh") [ "$3" = "{vllm_unit_on}" ] ;;
  *) exit 9 ;;
esac
""")
    return checkout


def _run(tmp_path: Path, body: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
         vllm_unit_on: str = "") -> subprocess.CompletedProcess:
    checkout = _checkout(tmp_path, body, vllm_unit_on=vllm_unit_on)
    base = {k: v for k, v in os.environ.items() if k != "ANSIBLE_VAULT_PASSWORD_FILE"}
    return subprocess.run([".ci/probe" if cwd is None else str(checkout / ".ci" / "probe")],
                          cwd=cwd or checkout, capture_output=True, text=True, timeout=30, check=False,
                          env={**base, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", **(env or {})})


def test_lib_is_valid_bash_and_every_bash_script_sources_it_first():
    subprocess.run(["bash", "-n", str(LIB)], check=True, timeout=30)
    late = []
    for script in BASH_SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        if script.name == "assert-unchanged":  # a filter over a log path relative to the caller: no cd
            continue
        code = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if code[0] != SOURCE_LINE:
            late.append(f"{script.name}: {code[0]}")
    assert late == [], f"source lib.sh before anything else: {late}"


@pytest.mark.parametrize("name", ["fail", "die", "want", "lab_env", "lab_executor", "rank_pgrep"])
def test_no_script_redefines_a_lib_function(name):
    copies = [p.name for p in BASH_SCRIPTS if f"\n{name}() " in p.read_text()]
    assert copies == [], f"{name}() is lib.sh's; remove the copy in {copies}"


def test_strict_mode_and_the_checkout_as_working_directory(tmp_path):
    proc = _run(tmp_path, 'echo "$PWD $-"; shopt -o pipefail | grep -q on && echo pipefail',
                cwd=tmp_path)  # run from elsewhere, by absolute path
    assert proc.returncode == 0, proc.stderr
    pwd, flags = proc.stdout.splitlines()[0].split()
    assert pwd == str(tmp_path / "checkout") and "e" in flags and "u" in flags, proc.stdout
    assert "pipefail" in proc.stdout
    assert (tmp_path / "checkout" / ".cache").is_dir()


def test_an_unset_variable_fails_the_script(tmp_path):
    proc = _run(tmp_path, 'echo "$no_such_variable"; echo reached')
    assert proc.returncode != 0 and "reached" not in proc.stdout


def test_lab_env_puts_the_venv_first_and_asks_servekit_for_the_vault_password_file(tmp_path):
    proc = _run(tmp_path, 'lab_env; echo "$PATH"; echo "$ANSIBLE_VAULT_PASSWORD_FILE"; '
                          'bash -c \'echo "$ANSIBLE_VAULT_PASSWORD_FILE"\'')
    assert proc.returncode == 0, proc.stderr
    path, vault, exported = proc.stdout.splitlines()
    assert path.startswith(f"{tmp_path / 'checkout' / '.venv' / 'bin'}:"), path
    assert vault == exported == "/fake/vault"


def test_lab_env_keeps_a_vault_password_file_given_by_the_caller(tmp_path):
    # the Makefile's LAB_ENV passes one
    proc = _run(tmp_path, 'lab_env; echo "$ANSIBLE_VAULT_PASSWORD_FILE"',
                env={"ANSIBLE_VAULT_PASSWORD_FILE": "/given"})
    assert proc.stdout == "/given\n", proc.stderr


def test_without_lab_env_path_and_vault_are_untouched(tmp_path):
    # .ci/run: the venv does not exist yet when it starts
    proc = _run(tmp_path, 'echo "$PATH"; echo "${ANSIBLE_VAULT_PASSWORD_FILE-unset}"')
    assert proc.stdout == f"{tmp_path / 'bin'}:/usr/bin:/bin\nunset\n", proc.stderr


def test_fail_names_the_script_and_exits_1(tmp_path):
    proc = _run(tmp_path, 'fail "no lab" up; echo reached')
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, "probe: no lab up\n", "")


@pytest.mark.parametrize(("cases", "expect"), [
    (" 1 2 3 4 ", "1 2 3 4"),
    (" 2 ", "2"),
    ("up share", "up share"),
    (" 12 ", ""),
])
def test_want_matches_whole_words_of_cases(tmp_path, cases, expect):
    proc = _run(tmp_path, f'cases="{cases}"; for c in 1 2 3 4 up share roll; do '
                          'if want "$c"; then printf "%s " "$c"; fi; done')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expect


@pytest.mark.parametrize(("unit_on", "executor"), [("lab-worker-1", "mp"), ("elsewhere", "ray")])
def test_lab_executor_and_its_ranks_pgrep(tmp_path, unit_on, executor):
    proc = _run(tmp_path, 'e=$(lab_executor lab-worker-1); echo "$e"; rank_pgrep "$e"', vllm_unit_on=unit_on)
    assert proc.returncode == 0, proc.stderr
    got, pgrep = proc.stdout.splitlines()
    assert got == executor
    assert pgrep == {"mp": 'pgrep -d" " -f "^[V]LLM|[b]in/vllm serve"',
                     "ray": 'pgrep -d" " -f "^[r]ay::RayWorker(Proc|Wrapper)"'}[executor]


def test_rank_pgrep_refuses_an_unknown_executor(tmp_path):
    proc = _run(tmp_path, 'x=$(rank_pgrep tp); echo "reached $x"')
    assert proc.returncode == 1 and proc.stderr == "probe: rank_pgrep: unknown executor 'tp'\n"
