#!/usr/bin/env bash
# Device check: what only a real NVIDIA GPU host can show (see tests/device/README.md).
#   bash tests/device/gpu-check.sh [OUTDIR]
# Records the host's raw nvidia-smi / procfs output (a fixture source), runs the
# node_facts module and the validate, preflight and gpudirect stages of site.yml
# on the host itself (tests/device/inventory: one GPU, no RDMA NIC), and one
# NCCL rank's init log. Needs python3 with PyYAML and Jinja2; ansible-core
# comes from ./.whl when it is not installed (wheels carried to the machine).
set -uo pipefail
out=${1:-${OUT:-/tmp/servekit-gpu-check}}
mkdir -p "$out/raw"
if ! command -v ansible-playbook >/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
section() { printf '\n== %s\n' "$*"; }
capture() {  # capture NAME CMD...: output to raw/NAME, first lines to the log
  local name=$1; shift
  "$@" >"$out/raw/$name" 2>&1; local rc=$?
  printf -- '-- %s (rc=%s)\n' "$*" "$rc"; head -c 2500 "$out/raw/$name"; echo
}
section "host"
capture uname.txt uname -a
capture nvidia-version.txt cat /proc/driver/nvidia/version
capture nvidia-smi.txt nvidia-smi
capture nvidia-smi-query-gpu.csv nvidia-smi \
  --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,compute_cap \
  --format=csv,noheader,nounits
capture nvidia-smi-q.xml nvidia-smi -q -x
capture nvidia-smi-topo-m.txt nvidia-smi topo -m
capture kallsyms-peer-memory.txt grep -E 'ib_register_peer_memory_client|nvidia_p2p_get_pages' /proc/kallsyms
capture lsmod.txt sh -c 'lsmod 2>/dev/null || cat /proc/modules'
capture infiniband.txt ls -la /sys/class/infiniband
capture limits.txt sh -c 'ulimit -l; grep -i locked /proc/1/limits /proc/self/limits'
section "node_facts module on this host"
ansible gpu-node -i tests/device/inventory -m node_facts -o >"$out/node_facts.txt" 2>&1
echo "rc=$?"; python3 - "$out/node_facts.txt" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
try:
    facts = json.loads(text[text.index("{"):])["ansible_facts"]["servekit_node"]
except Exception as exc:  # print what came back instead
    print("could not read facts:", exc); print(text[-3000:]); sys.exit(0)
print("keys:", sorted(facts))
for key in ("gpus", "driver", "cuda", "unified_memory", "gpudirect", "memlock", "arch"):
    print(f"{key}: {json.dumps(facts.get(key))[:600]}")
PY
section "site.yml --tags validate,preflight,gpudirect on this host"
timeout 300 ansible-playbook site.yml -i tests/device/inventory --tags validate,preflight,gpudirect \
  >"$out/site-stages.log" 2>&1; echo "rc=$?"
grep -E -A12 '^(fatal|failed):' "$out/site-stages.log" | head -60
grep -E -A3 'GPUDirect RDMA on|^PLAY RECAP' "$out/site-stages.log" | grep -v '^--$' | tail -12
section "one NCCL rank on this GPU"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET timeout 180 python3 - >"$out/raw/nccl-one-rank.log" 2>&1 <<'PY'
import os, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29512")
dist.init_process_group("nccl", rank=0, world_size=1)
t = torch.ones(1 << 20, device="cuda")
dist.all_reduce(t); torch.cuda.synchronize()
print("all_reduce ok, sum", float(t.sum()), "nccl", torch.cuda.nccl.version())
dist.destroy_process_group()
PY
echo "rc=$?"; grep -E 'NCCL INFO (NCCL version|NET/|Using network|cudaDriverVersion)|all_reduce|Error' \
  "$out/raw/nccl-one-rank.log" | head -20
tar -C "$out" -czf "$out/raw.tar.gz" raw && rm -rf "$out/raw"
section "done"
