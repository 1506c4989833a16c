#!/usr/bin/env bash
# Provisioning speed at 2, 4 and 8 lab nodes (issue 14 item 3): for each
# worker count, `servekit lab up --workers N` (bare nodes), `servekit up`
# timed once from bare nodes and then its idempotent re-runs (changed counts
# from the PLAY RECAP), `servekit lab down`; results (JSON + a markdown
# table) in .cache/bench/provision/<UTC time>/. servekit/bench/provision.py
# does the work (python -m servekit.bench.provision run --help).
#
#   benchmarks/provision.sh                                   # 1 3 7 workers, 3 re-runs each
#   benchmarks/provision.sh --workers 1 --reruns 5            # the 2-node lab only
#   benchmarks/provision.sh --workers 1,7 --variant nopipe:ANSIBLE_PIPELINING=false \
#       --variant forks5:ANSIBLE_FORKS=5                       # what a setting changes, measured
#   benchmarks/provision.sh --skip-vllm-above 2               # 4 and 8 nodes without the vllm stage
#
# Run as root from the project root with no lab up (a lab that is up is
# refused, never taken down). The lab is always brought down: by the Python
# process on a failure, Ctrl+C or SIGTERM, and by this script's trap if that
# process dies without doing so (it leaves .cache/bench/provision/.lab-owned).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "provision.sh: no $PY: run make venv (or set VENV)" >&2; exit 2; }
export PATH="$PWD/$VENV/bin:$PATH"
RESULTS=.cache/bench/provision
for arg in "$@"; do
  case "$arg" in --results-dir=*) RESULTS=${arg#--results-dir=} ;; esac
done
prev=""
for arg in "$@"; do
  [ "$prev" = --results-dir ] && RESULTS=$arg
  prev=$arg
done
MARKER="$RESULTS/.lab-owned"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -e "$MARKER" ]; then
    echo "provision.sh: the benchmark left its lab up; servekit lab down" >&2
    if servekit lab down; then rm -f "$MARKER"; else
      echo "provision.sh: LAB LEFT UP: servekit lab down failed; run it by hand" >&2; rc=1
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -e "$MARKER" ]; then
  echo "provision.sh: $MARKER exists: an earlier run died with its lab up; check \`servekit lab status\`," \
       "run \`servekit lab down\` if that lab is the benchmark's, and remove $MARKER" >&2
  trap - EXIT
  exit 2
fi
"$PY" -m servekit.bench.provision run "$@"
