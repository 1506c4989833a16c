"""The serving engine's own NCCL transport (roles/vllm/tasks/transport.yml), on NCCL's real line format.

Logs: the recorded H100 fallback logs (tests/fixtures/nccl/h100-*.log), the public multi-node
GDRDMA lines, and journal excerpts of a two-node vLLM Ray run written in NCCL's and Ray's real
formats (tests/fixtures/nccl/vllm-ray-*.log; see tests/fixtures/nccl/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from helpers import ansible_playbook, run_task, write_play
from servekit.module_utils.node_nccl import (
    engine_transport_problems,
    parse_nccl_channels,
    transport_check_plan,
)

ROOT = Path(__file__).resolve().parents[2]
NCCL = ROOT / "tests" / "fixtures" / "nccl"


def log(name: str) -> str:
    return (NCCL / name).read_text()


def test_channel_lines_parse_with_and_without_the_ray_prefix():
    channels = parse_nccl_channels(log("vllm-ray-2node-ib-gdrdma.log"))
    assert len(channels) == 8  # the ring lists "Channel 00/02 : 0 1" are no connections
    worker = channels[4]
    assert worker["host"] == "h100-b" and worker["pid"] == 4123
    assert (worker["src"], worker["dst"], worker["direction"]) == (0, 1, "receive")
    assert worker["via"] == "NET/IB/0/GDRDMA" and worker["net"] == "IB" and worker["gdrdma"]
    public = parse_nccl_channels(log("multinode-ib-gdrdma-lines.txt"))
    assert [c["via"] for c in public] == ["NET/IB/0/GDRDMA", "NET/IB/5/GDRDMA", "NET/IB/0/GDRDMA",
                                          "P2P/IPC"]
    assert public[3]["net"] is None  # P2P inside a node is no network channel
    assert parse_nccl_channels(log("h100-1gpu-no-rdma-socket-fallback.log")) == []


def test_ib_with_gdrdma_everywhere_passes():
    assert engine_transport_problems({"h100-a": log("vllm-ray-2node-ib-gdrdma.log"), "h100-b": ""},
                                     {"h100-a": True, "h100-b": True}) == []


def test_socket_channels_fail_naming_each_host_and_line():
    problems = engine_transport_problems({"h100-a": log("vllm-ray-2node-socket.log")},
                                         {"h100-a": True, "h100-b": True})
    assert len(problems) == 2
    assert problems[0].startswith("h100-a: cross-node channel over the socket transport (NET/Socket)")
    assert ("line (journal of h100-a): h100-a:5120:5189 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] "
            "[receive] via NET/Socket/0") in problems[0]
    assert problems[1].startswith("h100-b: cross-node channel over the socket transport")
    assert "(RayWorkerWrapper pid=6006, ip=10.10.0.2) h100-b:6006:6061" in problems[1]


def test_socket_is_no_failure_without_rdma():
    assert engine_transport_problems({"h100-a": log("vllm-ray-2node-socket.log")}, {},
                                     rdma_enabled=False) == []


def test_ib_without_gdrdma_fails_only_where_gdr_is_expected():
    text = log("vllm-ray-2node-ib-no-gdr.log")
    problems = engine_transport_problems({"h100-a": text}, {"h100-a": True, "h100-b": False})
    assert len(problems) == 1
    assert problems[0].startswith("h100-a: cross-node channel over NET/IB without GDRDMA")
    assert problems[0].endswith("h100-a:3877:3962 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] "
                                "[receive] via NET/IB/0")
    assert engine_transport_problems({"h100-a": text}, {"h100-a": False, "h100-b": False}) == []


def test_dgx_spark_without_gdr_passes_its_own_decision():
    """GB10: GPUDirect RDMA unsupported, so NET/IB without GDRDMA is the expected transport."""
    text = log("vllm-ray-2spark-ib-gdr-unsupported.log")
    assert engine_transport_problems({"spark-01": text}, {"spark-01": False, "spark-02": False}) == []
    # the same lines on a node that expects GDR fail
    assert len(engine_transport_problems({"spark-01": text}, {"spark-01": True, "spark-02": True})) == 2



def test_plugin_network_with_gdrdma_passes():
    """The HPC-X/DOCA net plugin names itself IBext_v<n> (nccl-rdma-sharp-plugins src/ib_plugin.c):
    an RDMA run, not a socket fallback."""
    text = log("vllm-ray-2node-ibext-gdrdma.log")
    assert {c["net"] for c in parse_nccl_channels(text)} == {"IBext_v8"}
    assert engine_transport_problems({"h100-a": text}, {"h100-a": True, "h100-b": True}) == []


def test_plugin_network_without_gdrdma_fails_where_gdr_is_expected():
    """Recorded NVIDIA/nccl#1814 lines: `via NET/IBext_v8/2` with no /GDRDMA."""
    text = log("plugin-ibext-lines.txt")
    problems = engine_transport_problems({"node-a": text}, {"hostname-test": True})
    assert len(problems) == 1
    assert problems[0].startswith("hostname-test: cross-node channel over NET/IBext_v8 without GDRDMA")
    assert problems[0].endswith("[receive] via NET/IBext_v8/2")
    assert engine_transport_problems({"node-a": text}, {"hostname-test": False}) == []

def test_no_channel_lines_means_the_debug_level_is_wrong():
    problems = engine_transport_problems({"h100-a": "INFO 11-27 [api_server.py] Starting\n", "h100-b": ""},
                                         {"h100-a": True})
    assert problems == [
        "no NCCL channel line (`NCCL INFO Channel .. via ..`) in the journal of h100-a, h100-b: the "
        "ranks must run with NCCL_DEBUG=INFO and NCCL_DEBUG_SUBSYS=INIT,NET (rdma_nccl_debug, "
        "rdma_nccl_debug_subsys in the cluster env file)"]


@pytest.mark.parametrize(("fixture", "rc"), [("vllm-ray-2node-ib-gdrdma.log", 0),
                                             ("vllm-ray-2node-socket.log", 2)])
def test_module_through_ansible(tmp_path, fixture, rc):
    code, out = run_task(tmp_path, {"nccl_transport_check": {
        "logs": {"h100-a": log(fixture), "h100-b": ""},
        "expect_gdr": {"h100-a": True, "h100-b": "yes"}}})
    assert code == rc, out
    assert out["channels"] == {"h100-a": 8 if rc == 0 else 4, "h100-b": 0}
    if rc:
        assert out["msg"].startswith("NCCL transport of the serving engine:\n- h100-a: ")


def test_vllm_imports_the_check_after_readiness():
    tasks = yaml.safe_load((ROOT / "roles" / "vllm" / "tasks" / "start.yml").read_text())
    block = next(t for t in tasks if "block" in t and "rescue" in t)["block"]
    names = [t["name"] for t in block]
    check = block[names.index("Check the engine's own NCCL transport (RDMA, model across nodes)")]
    assert names.index("Check the API served a completion") < names.index(check["name"])
    assert check["ansible.builtin.import_tasks"] == "transport.yml"
    # no `when` here: the plan decides, and says why it skips (the lab: no RDMA)
    assert "when" not in check


# --- when the check runs, and whose journal it reads (issue 24, item 1) -----------------------

def test_plan_runs_under_the_ray_executor_reading_the_heads_journal():
    """Under Ray only the head runs a vLLM unit (build_launch_plan: workers are not active); the
    check used to count active nodes and never ran in either GPU example."""
    plan = transport_check_plan(rdma_enabled=True, executor="ray", nodes_used=2,
                                active={"h100-a": True, "h100-b": False})
    assert plan["run"] and plan["read"] == ["h100-a"] and plan["min_hosts"] == 2
    assert "RAY_DEDUP_LOGS=0" in plan["reason"]


def test_plan_under_mp_reads_every_node_that_runs_vllm():
    plan = transport_check_plan(rdma_enabled=True, executor="mp", nodes_used=2,
                                active={"a": True, "b": True, "c": False})
    assert plan["run"] and plan["read"] == ["a", "b"] and plan["min_hosts"] == 2


@pytest.mark.parametrize(("rdma", "nodes_used", "reason"), [
    (False, 2, "cluster_rdma_enabled is false: no RDMA transport to check (the lab's CPU vLLM talks "
               "gloo, not NCCL)"),
    (True, 1, "the model fits on one node: no NCCL channel crosses nodes"),
])
def test_plan_skips_with_a_stated_reason(rdma, nodes_used, reason):
    plan = transport_check_plan(rdma_enabled=rdma, executor="ray", nodes_used=nodes_used,
                                active={"a": True, "b": False})
    assert plan == {"run": False, "read": [], "min_hosts": 0, "reason": reason}


def test_lab_inventory_gets_the_stated_skip():
    lab = yaml.safe_load((ROOT / "inventory" / "lab" / "group_vars" / "all" / "cluster.yml").read_text())
    assert lab["cluster_rdma_enabled"] is False  # the lab's CPU vLLM never has NCCL lines
    tasks = yaml.safe_load((ROOT / "roles" / "vllm" / "tasks" / "transport.yml").read_text())
    say = next(t for t in tasks if t["name"] == "Say why the engine's NCCL transport is not checked")
    assert "__vllm_transport_plan.plan.reason" in say["ansible.builtin.debug"]["msg"]


def test_ray_driver_runs_without_log_deduplication():
    text = (ROOT / "roles" / "vllm" / "vars" / "main.yml").read_text()
    ray_env = yaml.safe_load(text)["__vllm_ray_env"]
    assert "'RAY_DEDUP_LOGS': '0'" in ray_env and "if cluster_executor == 'ray'" in ray_env


# --- how it judges each rank -------------------------------------------------------------------

def test_folded_ray_lines_fail_naming_ray_dedup():
    """Ray folds NCCL channel lines of different ranks (they differ only in words with digits)."""
    problems = engine_transport_problems({"h100-a": log("vllm-ray-2node-dedup.log")},
                                         {"h100-a": True, "h100-b": True}, min_hosts=2)
    assert len(problems) == 1
    assert problems[0].startswith("Ray folded ranks' NCCL channel lines into one (log deduplication)")
    assert "RAY_DEDUP_LOGS=0" in problems[0] and "[repeated 3x across cluster]" in problems[0]


def test_a_node_without_channel_lines_fails_when_the_model_spans_it():
    head_only = "\n".join(line for line in log("vllm-ray-2node-ib-gdrdma.log").splitlines()
                          if not line.startswith("(RayWorkerWrapper"))
    problems = engine_transport_problems({"h100-a": head_only}, {"h100-a": True}, min_hosts=2)
    assert problems == [
        "NCCL channel lines from 1 host(s) (h100-a), but the model spans 2 nodes: the other ranks' "
        "lines did not reach the journal (Ray's log deduplication: RAY_DEDUP_LOGS=0 for the head "
        "vLLM; journald's rate limit)"]
    assert engine_transport_problems({"h100-a": log("vllm-ray-2node-ib-gdrdma.log")},
                                     {"h100-a": True, "h100-b": True}, min_hosts=2) == []


def _plan_task(**over) -> dict:
    return {"nccl_transport_check": {"rdma_enabled": True, "executor": "ray", "nodes_used": 2,
                                     "active": {"h100-a": True, "h100-b": False}} | over}


def test_module_plans_without_logs(tmp_path):
    code, out = run_task(tmp_path, _plan_task())
    assert code == 0, out
    assert out["plan"]["run"] and out["plan"]["read"] == ["h100-a"] and out["checked"] is False
    code, out = run_task(tmp_path, _plan_task(rdma_enabled=False))
    assert code == 0 and not out["plan"]["run"]
    assert out["msg"].startswith("cluster_rdma_enabled is false")


def test_module_judges_only_the_planned_journals(tmp_path):
    """Under Ray a worker's own vLLM journal is empty: only the head's is judged."""
    task = _plan_task()
    task["nccl_transport_check"]["logs"] = {"h100-a": log("vllm-ray-2node-dedup.log"), "h100-b": ""}
    task["nccl_transport_check"]["expect_gdr"] = {"h100-a": True, "h100-b": True}
    code, out = run_task(tmp_path, task)
    assert code == 2 and out["checked"] and out["channels"] == {"h100-a": 6}
    assert "Ray folded ranks' NCCL channel lines" in out["msg"]



def _run_transport_tasks(tmp_path: Path, head_log: str, rdma: bool) -> str:
    """roles/vllm/tasks/transport.yml's own plan, skip-reason and judge tasks on two local hosts
    under the Ray executor (only h100-a runs a vLLM unit); the journal read is given as its
    register, as the read task would leave it."""
    tasks = yaml.safe_load((ROOT / "roles" / "vllm" / "tasks" / "transport.yml").read_text())
    named = {t["name"]: t for t in tasks}
    judge = dict(named["Check every rank's NCCL transport (RDMA across nodes, GDRDMA where expected)"])
    judge["when"] = "__vllm_transport_plan.plan.run"
    (tmp_path / "head.log").write_text(head_log)
    facts = {"ansible.builtin.set_fact": {
        "__vllm_plan": {"active": "{{ inventory_hostname == 'h100-a' }}", "nodes_used": 2},
        "__vllm_nccl_log": {"stdout": "{{ lookup('file', '%s') if inventory_hostname == 'h100-a' "
                                      "else '' }}" % (tmp_path / "head.log")},
        "servekit_node": {"hostname": "{{ inventory_hostname }}", "gpudirect": {"expect_gdr": True}}}}
    play = [{"hosts": "all", "gather_facts": False,
             "vars": {"__vllm_restart": True, "cluster_rdma_enabled": rdma, "cluster_executor": "ray",
                      "cluster_head": "h100-a", "cluster_nodes": ["h100-a", "h100-b"]},
             "tasks": [facts, named["Plan the engine's NCCL transport check (RDMA, model across nodes, "
                                    "whose journal)"],
                       named["Say why the engine's NCCL transport is not checked"], judge]}]
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"all": {"hosts": {"h100-a": local, "h100-b": local}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    proc = ansible_playbook("-i", tmp_path / "hosts.yml", write_play(tmp_path / "play.yml", play),
                            env={"ANSIBLE_LOCALHOST_WARNING": "false"})
    return proc.stdout + proc.stderr


def test_transport_tasks_judge_the_heads_journal_under_ray(tmp_path):
    out = _run_transport_tasks(tmp_path, log("vllm-ray-2node-ib-gdrdma.log"), rdma=True)
    judged = out.split("TASK [Check every rank's NCCL transport")[1]
    assert "ok: [h100-a -> localhost]" in judged and "failed=1" not in out, out[-3000:]
    out = _run_transport_tasks(tmp_path, log("vllm-ray-2node-dedup.log"), rdma=True)
    assert "Ray folded ranks' NCCL channel lines into one" in out, out[-3000:]


def test_transport_tasks_say_why_they_skip_on_the_lab(tmp_path):
    out = _run_transport_tasks(tmp_path, "", rdma=False)
    assert "NCCL transport check skipped: cluster_rdma_enabled is false" in out, out[-3000:]
    assert "failed=0" in out
