#!/usr/bin/env bash
# Overhead of the toolkit: the same serving benchmark against
#   (a) provisioned  the cluster as site.yml left it (units, watchdog, API proxy)
#   (b) by-hand      the same vLLM argv and environment started by hand on the same
#                    nodes (no unit, no watchdog, no proxy: the API on the public port)
#   (c) defaults     (b) without the inventory's CPU tuning (VLLM_CPU_*, OMP_*, KMP_;
#                    under Ray also taken out of the Ray units): vLLM's own defaults
# then prints provisioned/by-hand and provisioned/defaults throughput per level.
# The units are restored on every exit (trap), also after a failure or Ctrl+C.
#
#   benchmarks/overhead.sh [-i INVENTORY] [-- servekit.bench run options]
#   benchmarks/overhead.sh -i inventory/lab -- --concurrency 1,2,4 --num-prompts 64
#
# Run from the project root as the user that runs site.yml (root on the lab),
# with the vault password where the inventory needs it (the lab:
# ANSIBLE_VAULT_PASSWORD_FILE=/var/lib/servekit/lab/vault-pass, as `make` sets).
# VARIANTS="provisioned by-hand" skips (c); ROUNDS=3 repeats the whole cycle
# (results: .cache/bench/overhead/<UTC time>-<variant>/, one folder per run).
set -euo pipefail

INV=inventory/lab
while [ $# -gt 0 ]; do
  case "$1" in
    -i) INV="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "overhead.sh: unknown option $1 (allowed: -i INVENTORY, then -- and servekit.bench run options)" >&2
       exit 2 ;;
  esac
done
BENCH_OPTS=("$@")
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PLAYBOOK="$VENV/bin/ansible-playbook"
RESULTS=${RESULTS:-.cache/bench/overhead}
VARIANTS=${VARIANTS:-"provisioned by-hand defaults"}
ROUNDS=${ROUNDS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-900}
for variant in $VARIANTS; do
  case "$variant" in provisioned|by-hand|defaults) ;; *)
    echo "overhead.sh: VARIANTS has '$variant'; allowed: provisioned, by-hand, defaults" >&2; exit 2 ;;
  esac
done
# Always in this order: by-hand before defaults (defaults changes Ray; only restore undoes it).
ORDERED=""
for variant in provisioned by-hand defaults; do
  case " $VARIANTS " in *" $variant "*) ORDERED="$ORDERED $variant" ;; esac
done
[ -x "$PY" ] && [ -x "$PLAYBOOK" ] || { echo "overhead.sh: no $PY or $PLAYBOOK: run make venv (or set VENV)" >&2; exit 2; }
[ -e "$INV" ] || { echo "overhead.sh: inventory $INV not found" >&2; exit 2; }
export PATH="$PWD/$VENV/bin:$PATH"

WORK=$(mktemp -d /tmp/servekit-overhead.XXXXXX)
chmod 700 "$WORK"
HANDED_OFF=0

phase() {  # phase NAME [VARIANT]: the node steps of benchmarks/overhead.yml
  "$PLAYBOOK" -i "$INV" benchmarks/overhead.yml -e "overhead_phase=$1" -e "overhead_variant=${2:-by-hand}" \
    -e "overhead_workdir=$WORK"
}

restore() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$HANDED_OFF" = 1 ]; then
    echo "== restoring the units (watchdog, proxy, vLLM; Ray where it was changed)"
    if ! phase restore; then
      echo "overhead.sh: RESTORE FAILED: run again: $PLAYBOOK -i $INV benchmarks/overhead.yml -e overhead_phase=restore" >&2
      rc=1
    elif ! "$PY" -m servekit.bench wait --base-url "$BASE_URL" --timeout "$READY_TIMEOUT" --api-key-stdin \
        <<<"$KEY"; then
      echo "overhead.sh: the units are started but the API is not ready; see journalctl -u servekit-vllm" >&2
      rc=1
    fi
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap restore EXIT
trap 'exit 130' INT TERM

phase info
BASE_URL=$(cat "$WORK/base_url")
MODEL=$(cat "$WORK/model")
TOKENIZER=$(cat "$WORK/tokenizer")
KEY=$(cat "$WORK/key")
rm -f "$WORK/key"

bench() {  # bench LABEL: one servekit.bench run, prints its run folder on the last line
  local opts=(run --base-url "$BASE_URL" --model "$MODEL" --results-dir "$RESULTS" --label "$1" --api-key-stdin)
  [ -n "$TOKENIZER" ] && opts+=(--tokenizer "$TOKENIZER")
  "$PY" -m servekit.bench "${opts[@]}" "${BENCH_OPTS[@]}" <<<"$KEY" | tee "$WORK/out"
  sed -n 's|^results: \(.*\)/ (.*|\1|p' "$WORK/out" | tail -1 > "$WORK/last"
}

declare -A RUN
for round in $(seq 1 "$ROUNDS"); do
  for variant in $ORDERED; do
    echo "== round $round: $variant"
    if [ "$variant" = provisioned ]; then
      if [ "$HANDED_OFF" = 1 ]; then phase restore; HANDED_OFF=0; fi
      "$PY" -m servekit.bench wait --base-url "$BASE_URL" --timeout "$READY_TIMEOUT" --api-key-stdin <<<"$KEY"
    else
      if [ "$HANDED_OFF" = 0 ]; then HANDED_OFF=1; phase handoff; else phase stop; fi
      [ "$variant" = defaults ] && phase ray-defaults defaults
      phase start "$variant"
      "$PY" -m servekit.bench wait --base-url "$BASE_URL" --timeout "$READY_TIMEOUT" --api-key-stdin <<<"$KEY"
    fi
    bench "overhead-$variant"
    RUN[$round-$variant]=$(cat "$WORK/last")
  done
done

echo
echo "== overhead ratios (output tokens/s and requests/s of the provisioned cluster over the other run)"
for round in $(seq 1 "$ROUNDS"); do
  for variant in by-hand defaults; do
    if [ -n "${RUN[$round-provisioned]:-}" ] && [ -n "${RUN[$round-$variant]:-}" ]; then
      echo "-- round $round: provisioned / $variant"
      "$PY" -m servekit.bench ratio "${RUN[$round-provisioned]}" "${RUN[$round-$variant]}"
    fi
  done
done
