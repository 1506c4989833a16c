# shellcheck shell=bash
# What the .ci scripts share, sourced first by each:
#   source "$(dirname "$0")/lib.sh"
# Strict mode, the checkout as the working directory (the scripts name every
# file relative to it; run from anywhere, also by the Makefile), and .cache,
# where they keep their logs. The lab checks call lab_env next; .ci/run does
# not: it builds the venv, and the Makefile it drives names the venv's
# commands itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p .cache

# The calling script's name, which its messages start with.
ci_name=${0##*/}

# The lab's environment: the venv's commands first (servekit, ansible-playbook,
# pytest, python3 with servekit importable), and the lab's vault password file,
# asked of servekit (the Makefile's LAB_ENV passes the same one), for the
# playbooks' vaulted variables.
lab_env() {
  export PATH="$PWD/.venv/bin:$PATH"
  export ANSIBLE_VAULT_PASSWORD_FILE=${ANSIBLE_VAULT_PASSWORD_FILE:-$(servekit lab vault-path)}
}

# MESSAGE...: on stderr after the script's name, then exit 1.
fail() { echo "$ci_name: $*" >&2; exit 1; }

# CASE: whether CASE is one of the caller's $cases (space-separated words,
# from the script's *_CASES setting).
# shellcheck disable=SC2154  # cases is the caller's
want() { [[ " $cases " == *" $1 "* ]]; }

# NODE: the vLLM executor NODE serves with: mp when it runs a vLLM unit of its
# own (each rank a unit), else ray (a worker's ranks are Ray actors under its
# servekit-ray unit, the head's vLLM unit drives them).
lab_executor() {
  if servekit lab ssh "$1" test -f /etc/systemd/system/servekit-vllm.service; then echo mp; else echo ray; fi
}

# EXECUTOR: the command (run on a worker node) that prints its vLLM rank's
# pids, space-separated: the vLLM processes (mp), or the Ray actor (ray).
rank_pgrep() {
  case $1 in
    mp) echo 'pgrep -d" " -f "^[V]LLM|[b]in/vllm serve"' ;;
    ray) echo 'pgrep -d" " -f "^[r]ay::RayWorker(Proc|Wrapper)"' ;;
    *) fail "rank_pgrep: unknown executor '$1'" ;;
  esac
}
