#!/usr/bin/env bash
# Model staging on the lab: bytes each node received on a first and a second
# `servekit up --tags vllm`, for lab-staging (~300 MB, generated once on the
# control node) and lab-tiny (the lab's model). The first run of each starts
# with the model's files removed from every node; the second must move 0 bytes
# and change nothing. The lab serves lab-tiny again at the end, and the nodes
# keep no lab-staging files.
#
#   benchmarks/staging.sh [-i INVENTORY]
#
# Run from the project root as root with the lab up and serving (`make demo`
# or `make site`). Per run: .cache/staging-bench/<model>-<first|second>.{log,
# staging.json,coldstart.json}; the table at the end. Exit 1 when a second run
# moved a byte or reported a change.
set -euo pipefail
cd "$(dirname "$0")/.."
INV=inventory/lab
while [ $# -gt 0 ]; do
  case "$1" in
    -i) INV="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "staging.sh: unknown option $1 (allowed: -i INVENTORY)" >&2; exit 2 ;;
  esac
done
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_VAULT_PASSWORD_FILE=${ANSIBLE_VAULT_PASSWORD_FILE:-$(servekit lab vault-path)}
OUT=.cache/staging-bench
LARGE=$PWD/.cache/models/lab-staging
MODELS=/opt/servekit/models
mkdir -p "$OUT"
fail() { echo "staging.sh: $*" >&2; exit 1; }

if [ ! -f "$LARGE/model.safetensors.index.json" ]; then
  echo "-- generating lab-staging into $LARGE (once)"
  python -m servekit.lab.tinymodel --preset lab-staging "$LARGE" >/dev/null
fi
echo "lab-staging on the control node: $(du -sh "$LARGE" | cut -f1)"

remove_on_nodes() {  # the model's directory on every node
  ansible -i "$INV" 'head:workers' -m ansible.builtin.file -a "path=$MODELS/$1 state=absent" >/dev/null \
    || fail "could not remove $MODELS/$1 from the nodes"
}

run() {  # model, first|second, extra servekit up args...
  local model=$1 which=$2; shift 2
  local log="$OUT/$model-$which.log"
  rm -f .cache/staging.json
  echo "-- $model, $which run"
  MODEL_NAME=$model servekit up -i "$INV" --tags vllm "$@" > "$log" 2>&1 \
    || { tail -40 "$log" >&2; fail "$model $which run failed (log: $log)"; }
  [ -f .cache/staging.json ] || fail "$model $which run wrote no .cache/staging.json (log: $log)"
  cp .cache/staging.json "$OUT/$model-$which.staging.json"
  cp .cache/coldstart.json "$OUT/$model-$which.coldstart.json" 2>/dev/null || true
  sed -n '/^PLAY RECAP/,/^$/p' "$log" | sed 's/^/   /'
  if [ "$which" = second ] && grep -E '^[a-z0-9.-]+ +: ok=[0-9]+ +changed=[1-9]' "$log" >/dev/null; then
    fail "$model: the second run reported changes (log: $log)"
  fi
}

remove_on_nodes lab-staging
run lab-staging first -e "vllm_model_source=$LARGE"
run lab-staging second -e "vllm_model_source=$LARGE"
remove_on_nodes lab-tiny
run lab-tiny first
run lab-tiny second
remove_on_nodes lab-staging

python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows, bad = [], []
for model in ("lab-staging", "lab-tiny"):
    for which in ("first", "second"):
        report = json.loads((out / f"{model}-{which}.staging.json").read_text())
        cold = out / f"{model}-{which}.coldstart.json"
        phases = json.loads(cold.read_text())["phases"] if cold.exists() else {}
        for node, staged in sorted(report["nodes"].items()):
            rows.append((model, which, node, staged["source"], staged["bytes"], phases.get("model delivery")))
        if which == "second" and report["bytes_total"]:
            bad.append(f"{model}: the second run moved {report['bytes_total']} bytes")
print(f"\n{'model':<12} {'run':<7} {'node':<14} {'from':<13} {'bytes':>12} {'model delivery s':>17}")
for model, which, node, source, moved, seconds in rows:
    print(f"{model:<12} {which:<7} {node:<14} {source:<13} {moved:>12,} {seconds if seconds is not None else '-':>17}")
if bad:
    sys.exit("staging.sh: " + "; ".join(bad))
print("\nsecond runs moved 0 bytes")
PY
