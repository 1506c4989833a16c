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
# with the vault password where the inventory needs it (the lab's is found
# with `servekit lab vault-path` unless ANSIBLE_VAULT_PASSWORD_FILE is set).
# VARIANTS="provisioned by-hand" skips (c). ROUNDS (default 3) repeats the
# whole cycle, interleaved; the ratios are then the median over the rounds
# with their range and spread (results: .cache/bench/overhead/<UTC
# time>-overhead-<variant>/, one folder per run). DEFAULTS_KEEP (default
# VLLM_CPU_KVCACHE_SPACE) names tuning the defaults run keeps: without it
# vLLM sizes each rank's KV cache as gpu-memory-utilization x the memory it
# sees (vllm/v1/worker/cpu_worker.py), 0.5 x 24 GiB per rank for lab-tiny:
# two ranks on the lab's one host would exhaust it. DEFAULTS_KEEP="" drops
# it too (only where each node has its own memory).
set -euo pipefail

INV=inventory/lab
while [ $# -gt 0 ]; do
  case "$1" in
    -i) INV="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
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
ROUNDS=${ROUNDS:-3}
READY_TIMEOUT=${READY_TIMEOUT:-900}
DEFAULTS_KEEP=${DEFAULTS_KEEP-VLLM_CPU_KVCACHE_SPACE}
case "$ROUNDS" in ''|*[!0-9]*|0) echo "overhead.sh: ROUNDS=$ROUNDS; allowed: a whole number >= 1" >&2; exit 2 ;; esac
for name in $DEFAULTS_KEEP; do
  case "$name" in VLLM_CPU_*|OMP_*|KMP_*) ;; *)
    echo "overhead.sh: DEFAULTS_KEEP has '$name'; allowed: names of the tuning the defaults run drops" \
         "(VLLM_CPU_*, OMP_*, KMP_*)" >&2; exit 2 ;;
  esac
done
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
if [ -z "${ANSIBLE_VAULT_PASSWORD_FILE:-}" ] && [ -e "$INV/group_vars/all/vault.yml" ]; then
  ANSIBLE_VAULT_PASSWORD_FILE=$("$PY" -m servekit.cli lab vault-path) \
    || { echo "overhead.sh: $INV has a vault and no ANSIBLE_VAULT_PASSWORD_FILE is set" >&2; exit 2; }
  export ANSIBLE_VAULT_PASSWORD_FILE
fi
KEEP_JSON=$("$PY" -c 'import json,sys; print(json.dumps({"overhead_keep": sys.argv[1:]}))' $DEFAULTS_KEEP)

WORK=$(mktemp -d /tmp/servekit-overhead.XXXXXX)
chmod 700 "$WORK"
HANDED_OFF=0

phase() {  # phase NAME [VARIANT]: the node steps of benchmarks/overhead.yml
  "$PLAYBOOK" -i "$INV" benchmarks/overhead.yml -e "overhead_phase=$1" -e "overhead_variant=${2:-by-hand}" \
    -e "overhead_workdir=$WORK" -e "$KEEP_JSON"
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
[ -n "$DEFAULTS_KEEP" ] && echo "(the defaults run kept: $DEFAULTS_KEEP)"
for variant in by-hand defaults; do
  pairs=()
  for round in $(seq 1 "$ROUNDS"); do
    if [ -n "${RUN[$round-provisioned]:-}" ] && [ -n "${RUN[$round-$variant]:-}" ]; then
      echo "-- round $round: provisioned / $variant"
      "$PY" -m servekit.bench ratio "${RUN[$round-provisioned]}" "${RUN[$round-$variant]}"
      pairs+=("${RUN[$round-provisioned]}" "${RUN[$round-$variant]}")
    fi
  done
  if [ "${#pairs[@]}" -gt 2 ]; then
    echo "-- provisioned / $variant over $((${#pairs[@]} / 2)) rounds: median, range, spread"
    "$PY" -m servekit.bench ratio "${pairs[@]}"
  fi
done
