"""module_utils/placement.py: every deployment rule refuses bad input naming the field, and the
placement of replicas onto nodes and devices is the documented one."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml
from helpers import BIN, ROOT, ansible_playbook, run
from servekit.module_utils.placement import (
    PlacementError,
    conflicts_with_model_name,
    default_deployments,
    engines,
    format_table,
    not_served_yet,
    parse_deployments,
    place,
    plan,
    replica_engines,
    serves_replicas,
    unit_slug,
)
from servekit.module_utils.vllm_registry import load_registry_file

# the shipped registry: llama-3.1-8b-instruct TP 1, gpt-oss-120b TP 2, deepseek-r1 TP 8 x PP 2
MODELS = load_registry_file(str(ROOT / "config" / "model_registry.yml"))
# registry entries of other sizes, in the registry's own form (hyphenated vLLM flags)
SIZED = {**MODELS,
         "tp4": {"model": "org/tp4", "tensor-parallel-size": 4},
         "tp2pp2": {"model": "org/tp2pp2", "tensor-parallel-size": 2, "pipeline-parallel-size": 2},
         "tp12": {"model": "org/tp12", "tensor-parallel-size": 12}}
H100x2 = {"h100-01": 8, "h100-02": 8}
LAB = {"lab-head": 1, "lab-worker-1": 1}


def rows(replicas):
    return [(r.deployment, r.index, {n: list(d) for n, d in r.devices}) for r in replicas]


@pytest.mark.parametrize(
    ("deployments", "devices", "expected"),
    [
        # one model across both 8-GPU nodes as one engine: whole nodes, as the single engine today
        ([{"name": "r1", "model": "deepseek-r1"}], H100x2,
         [("r1", 0, {"h100-01": list(range(8)), "h100-02": list(range(8))})]),
        # TP 4 x 4 replicas: two per node on distinct devices, spread over the nodes
        ([{"name": "m", "model": "tp4", "replicas": 4}], H100x2,
         [("m", 0, {"h100-01": [0, 1, 2, 3]}), ("m", 1, {"h100-02": [0, 1, 2, 3]}),
          ("m", 2, {"h100-01": [4, 5, 6, 7]}), ("m", 3, {"h100-02": [4, 5, 6, 7]})]),
        # a deployment's replicas go to different nodes before any node takes a second one
        ([{"name": "x", "model": "llama-3.1-8b-instruct", "replicas": 2},
          {"name": "y", "model": "gpt-oss-120b"}], {"a": 2, "b": 2, "c": 2},
         [("x", 0, {"b": [0]}), ("x", 1, {"c": [0]}), ("y", 0, {"a": [0, 1]})]),
        # small ones listed first still leave the whole nodes a spanning replica needs
        ([{"name": "small", "model": "llama-3.1-8b-instruct", "replicas": 2},
          {"name": "big", "model": "tp12"}], {"a": 4, "b": 4, "c": 4, "d": 4},
         [("small", 0, {"d": [0]}), ("small", 1, {"d": [1]}),
          ("big", 0, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]})]),
        # larger first, then best fit: the TP 1 replicas fill the node the TP 2 left room on
        ([{"name": "one", "model": "llama-3.1-8b-instruct", "replicas": 2},
          {"name": "two", "model": "gpt-oss-120b"}], {"a": 2, "b": 2},
         [("one", 0, {"b": [0]}), ("one", 1, {"b": [1]}), ("two", 0, {"a": [0, 1]})]),
        # a pin restricts a deployment to its hosts
        ([{"name": "p", "model": "llama-3.1-8b-instruct", "replicas": 2, "nodes": ["h100-02"]}], H100x2,
         [("p", 0, {"h100-02": [0]}), ("p", 1, {"h100-02": [1]})]),
        # the lab: lab-tiny (TP 2) spans the two one-device nodes
        ([{"name": "lab-tiny", "model": "lab-tiny"}], LAB,
         [("lab-tiny", 0, {"lab-head": [0], "lab-worker-1": [0]})]),
        # TP 2 x PP 2 on four one-device nodes: four whole nodes
        ([{"name": "x", "model": "tp2pp2"}], {"a": 1, "b": 1, "c": 1, "d": 1},
         [("x", 0, {"a": [0], "b": [0], "c": [0], "d": [0]})]),
    ],
    ids=["one-engine-16", "tp4x4", "spread", "span-first", "best-fit", "pinned", "lab", "tp2pp2-4nodes"],
)
def test_placement(deployments, devices, expected):
    replicas = plan(deployments, SIZED, devices)
    assert rows(replicas) == expected
    assert rows(plan(deployments, SIZED, devices)) == expected, "the same inputs must place the same way"


def test_the_default_is_one_deployment_of_the_model_one_replica():
    replicas = plan(default_deployments("deepseek-r1"), MODELS, H100x2)
    assert engines(replicas) == 1
    assert replicas[0].as_dict() == {"deployment": "deepseek-r1", "replica": 0, "model": "deepseek-r1",
                                     "nodes": ["h100-01", "h100-02"],
                                     "devices": {"h100-01": list(range(8)), "h100-02": list(range(8))}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x"}, "cluster_deployments = {'name': 'x'}: must be a list of deployments"),
        (["x"], "cluster_deployments[0] = 'x': must be a mapping with keys name, model"),
        ([{"name": "a", "model": "tp4", "replica": 2}],
         "cluster_deployments[0]: unknown key 'replica' (did you mean replicas?); "
         "allowed: name, model, replicas, nodes"),
        ([{"model": "tp4"}], "cluster_deployments[0].name = None: is required, a non-empty string"),
        ([{"name": " ", "model": "tp4"}], "cluster_deployments[0].name = ' ': is required"),
        ([{"name": "a", "model": "tp4"}, {"name": "a", "model": "tp2pp2"}],
         "cluster_deployments[1].name = 'a': cluster_deployments[0].name is the same; "
         "served names must be unique"),
        ([{"name": "a", "model": "gpt-oss-2b"}],
         "cluster_deployments[0].model = 'gpt-oss-2b': must be a model registry entry; entries: "
         "deepseek-r1, gpt-oss-120b, gpt-oss-20b, lab-staging, lab-tiny, lab-tiny-b, lab-tiny-tp1, "
         "llama-3.1-8b-instruct, qwen2.5-32b-instruct, tp12, tp2pp2, tp4"),
        ([{"name": "a", "model": "tp4", "replicas": 0}],
         "cluster_deployments[0].replicas = 0: must be an integer >= 1"),
        ([{"name": "a", "model": "tp4", "replicas": "2"}],
         "cluster_deployments[0].replicas = '2': must be an integer >= 1"),
        ([{"name": "a", "model": "tp4", "replicas": True}],
         "cluster_deployments[0].replicas = True: must be an integer >= 1"),
        ([{"name": "a", "model": "tp4", "nodes": ["h100-03"]}],
         "cluster_deployments[0].nodes = 'h100-03': not a host of the inventory's head or workers; "
         "hosts: h100-01, h100-02"),
        ([{"name": "a", "model": "tp4", "nodes": []}],
         "cluster_deployments[0].nodes = []: must be a non-empty list of inventory hosts; "
         "hosts: h100-01, h100-02"),
        ([{"name": "a", "model": "tp4", "nodes": "h100-01"}],
         "cluster_deployments[0].nodes = 'h100-01': must be a non-empty list"),
    ],
    ids=["not-a-list", "not-a-mapping", "unknown-key", "no-name", "blank-name", "duplicate-name",
         "unknown-model", "zero-replicas", "string-replicas", "bool-replicas", "unknown-node",
         "empty-nodes", "nodes-not-a-list"],
)
def test_every_input_rule_names_the_field(raw, message):
    _, problems = parse_deployments(raw, SIZED, list(H100x2))
    assert any(message in p for p in problems), problems
    with pytest.raises(PlacementError, match="cluster_deployments"):
        plan(raw, SIZED, H100x2)


def test_every_problem_is_reported_at_once():
    raw = [{"name": "a", "model": "nope", "replicas": 0}, {"name": "a", "model": "tp4", "nodes": ["zz"]}]
    _, problems = parse_deployments(raw, SIZED, list(H100x2))
    assert len(problems) == 4, problems


@pytest.mark.parametrize(
    ("raw", "devices", "message"),
    [
        ([{"name": "m", "model": "tp4", "replicas": 5}], H100x2,
         "cluster_deployments: deployment 'm' replica 5 of 5 needs 4 device(s) (tensor-parallel-size 4 x "
         "pipeline-parallel-size 1 of model 'tp4') on one node; free: h100-01 0 of 8, h100-02 0 of 8"),
        ([{"name": "m", "model": "tp4", "replicas": 3, "nodes": ["h100-01"]}], H100x2,
         "deployment 'm' replica 3 of 3 (nodes: h100-01) needs 4 device(s)"),
        ([{"name": "r1", "model": "deepseek-r1"}, {"name": "l", "model": "llama-3.1-8b-instruct"}], H100x2,
         "deployment 'l' replica 1 of 1 needs 1 device(s)"),
        ([{"name": "r1", "model": "deepseek-r1"}], {"a": 8, "b": 4, "c": 4},
         "deployment 'r1' replica 1 of 1 needs 16 device(s) (tensor-parallel-size 8 x "
         "pipeline-parallel-size 2 of model 'deepseek-r1'), more than one node holds"),
        ([{"name": "t", "model": "tp12"}], H100x2,
         "deployment 't' replica 1 of 1 needs 12 device(s)"),
        ([{"name": "l", "model": "llama-3.1-8b-instruct"}, {"name": "lab", "model": "lab-tiny"}], LAB,
         # the spanning replica is placed first: the TP 1 one is what finds no room
         "deployment 'l' replica 1 of 1 needs 1 device(s) (tensor-parallel-size 1 x pipeline-parallel-size 1 "
         "of model 'llama-3.1-8b-instruct') on one node; free: lab-head 0 of 1, lab-worker-1 0 of 1"),
    ],
    ids=["too-many-replicas", "pinned-node-full", "no-room-left", "mixed-counts", "not-whole-nodes",
         "lab-span-after-one"],
)
def test_a_set_that_does_not_fit_names_the_deployment_needs_and_free(raw, devices, message):
    with pytest.raises(PlacementError) as caught:
        plan(raw, SIZED, devices)
    assert message in str(caught.value)
    assert "free:" in str(caught.value)


def test_the_table_has_one_row_per_node_of_each_replica():
    replicas = place(parse_deployments([{"name": "r1", "model": "deepseek-r1"},
                                        ], MODELS, list(H100x2))[0], H100x2)
    assert format_table(replicas).splitlines() == [
        "DEPLOYMENT  REPLICA  MODEL        NODE     DEVICES",
        "r1          1        deepseek-r1  h100-01  0,1,2,3,4,5,6,7",
        "r1          1        deepseek-r1  h100-02  0,1,2,3,4,5,6,7",
    ]


FOUR_NODES = {"a": 8, "b": 8, "c": 8, "d": 8}


@pytest.mark.parametrize(
    ("raw", "devices", "executor", "message"),
    [
        # a replica across nodes beside other engines: Ray places its ranks, so the Ray executor
        ([{"name": "r1", "model": "deepseek-r1"}, {"name": "m", "model": "tp4"}], FOUR_NODES, "mp",
         "cluster_executor = 'mp': replica 1 of 'r1' spans nodes a, b, and a replica across nodes "
         "beside other engines runs under the Ray executor (its ranks are placed on its nodes by Ray); "
         "allowed: ray. The placement:\nDEPLOYMENT  REPLICA  MODEL        NODE  DEVICES\n"),
        # ... and one spanning replica under another name is a replica engine too
        ([{"name": "chat", "model": "deepseek-r1"}], H100x2, "mp",
         "cluster_executor = 'mp': replica 1 of 'chat' spans nodes h100-01, h100-02"),
        # two names, one unit name
        ([{"name": "a/b", "model": "tp4"}, {"name": "A-B", "model": "tp4"}], H100x2, "ray",
         "cluster_deployments: names 'a/b' and 'A-B' give the same unit name (servekit-vllm-a-b-N.service); "
         "rename one"),
    ],
    ids=["spanning-beside-others-mp", "spanning-renamed-mp", "same-unit"],
)
def test_what_the_serving_side_cannot_run_is_refused_with_the_placement(raw, devices, executor, message):
    problems = not_served_yet(raw, plan(raw, SIZED, devices), executor)
    assert len(problems) == 1 and message in problems[0], problems


@pytest.mark.parametrize("raw", [[], [{"name": "tp4", "model": "tp4"}],
                                 [{"name": "deepseek-r1", "model": "deepseek-r1"}],
                                 [{"name": "m", "model": "tp4", "replicas": 4}],
                                 [{"name": "chat", "model": "tp4"}, {"name": "b", "model": "tp2pp2"}],
                                 [{"name": "chat", "model": "deepseek-r1"}]])
def test_a_spanning_engine_alone_or_replicas_inside_nodes_are_served(raw):
    assert not_served_yet(raw, plan(raw, SIZED, H100x2)) == []


def test_a_spanning_replica_beside_others_is_served_under_ray_from_its_first_node():
    """Two 16-device replicas across node pairs and one inside a node: each spanning replica's unit,
    port and router target on the first node of its pair, every node of the pair in ``nodes``."""
    raw = [{"name": "r1", "model": "deepseek-r1", "replicas": 2}]
    placed = plan(raw, SIZED, FOUR_NODES)
    assert not_served_yet(raw, placed, "ray") == []
    assert serves_replicas(raw, placed)
    assert [(e["unit"], e["node"], e["nodes"], e["devices"], e["port"])
            for e in replica_engines(placed, 8100)] == [
        ("servekit-vllm-r1-1.service", "a", ["a", "b"], list(range(8)), 8100),
        ("servekit-vllm-r1-2.service", "c", ["c", "d"], list(range(8)), 8100),
    ]


def test_replicas_inside_nodes_run_as_replica_engines_with_their_own_unit_and_port():
    raw = [{"name": "m", "model": "tp4", "replicas": 4},
           {"name": "org/Small.v2", "model": "llama-3.1-8b-instruct"}]
    placed = plan(raw, SIZED, {"h100-01": 8, "h100-02": 9})
    assert serves_replicas(raw, placed)
    assert [(e["unit"], e["node"], e["nodes"], e["devices"], e["port"])
            for e in replica_engines(placed, 8100)] == [
        ("servekit-vllm-m-1.service", "h100-01", ["h100-01"], [0, 1, 2, 3], 8100),
        ("servekit-vllm-m-2.service", "h100-02", ["h100-02"], [0, 1, 2, 3], 8100),
        ("servekit-vllm-m-3.service", "h100-01", ["h100-01"], [4, 5, 6, 7], 8104),
        ("servekit-vllm-m-4.service", "h100-02", ["h100-02"], [4, 5, 6, 7], 8104),
        ("servekit-vllm-org-small-v2-1.service", "h100-02", ["h100-02"], [8], 8108),
    ]
    # without deployments, or one engine under its registry name (inside a node or across nodes): the
    # single engine (any runtime); one engine under another name: a replica engine behind the router
    assert not serves_replicas([], plan([{"name": "tp4", "model": "tp4"}], SIZED, H100x2))
    alone = [{"name": "tp4", "model": "tp4"}]
    assert not serves_replicas(alone, plan(alone, SIZED, H100x2))
    assert not_served_yet(alone, plan(alone, SIZED, H100x2)) == []
    renamed = [{"name": "chat", "model": "tp4"}]
    assert serves_replicas(renamed, plan(renamed, SIZED, H100x2))
    spanning = [{"name": "deepseek-r1", "model": "deepseek-r1"}]
    assert not serves_replicas(spanning, plan(spanning, SIZED, H100x2))
    assert not_served_yet(spanning, plan(spanning, SIZED, H100x2), "mp") == []


@pytest.mark.parametrize(("name", "slug"), [("lab-tiny", "lab-tiny"), ("org/Model_v1.5", "org-model-v1-5"),
                                            ("--x--", "x"), ("ü", "model")])
def test_a_served_name_becomes_a_unit_name_word(name, slug):
    assert unit_slug(name) == slug


def test_model_name_with_deployments_is_refused_and_alone_is_not():
    assert conflicts_with_model_name([], "tp4") == []
    assert conflicts_with_model_name([{"name": "tp4", "model": "tp4"}], "") == []
    assert conflicts_with_model_name([{"name": "tp4", "model": "tp4"}], "tp2pp2") == [
        "MODEL_NAME = 'tp2pp2' is set, but cluster_deployments decides what is served: unset MODEL_NAME "
        "(or leave out servekit up --model), or edit cluster_deployments"]


# --------------------------------------------------------------------------
# through the validate play on the control node (nothing connects: the
# example's addresses are never contacted)
# --------------------------------------------------------------------------

EXAMPLE = ROOT / "inventory" / "example-2x8-h100"


def _validate(tmp_path, deployments, env: dict | None = None):
    """The validate play on a copy of the example with these deployments; env's "vars" (a dict) go
    into the inventory beside them, the rest into the environment."""
    env = dict(env or {})
    inv = tmp_path / "inv"
    shutil.copytree(EXAMPLE, inv)
    (inv / "group_vars" / "all" / "deployments.yml").write_text(
        yaml.safe_dump({"cluster_deployments": deployments, **env.pop("vars", {})}))
    return ansible_playbook("-i", inv, "playbooks/validate.yml", unset=("MODEL_NAME",),
                            env={"ANSIBLE_NOCOLOR": "1", **env})


@pytest.mark.parametrize(
    ("deployments", "env", "message"),
    [
        ([{"name": "a", "model": "gpt-oss-120b", "nodes": ["h100-03"]},
          {"name": "a", "model": "gpt-oss-2b"}], None,
         "cluster_deployments: 3 problem(s): cluster_deployments[0].nodes = 'h100-03': not a host of the "
         "inventory's head or workers; hosts: h100-01, h100-02; cluster_deployments[1].name = 'a': "
         "cluster_deployments[0].name is the same; served names must be unique; "
         "cluster_deployments[1].model = 'gpt-oss-2b': must be a model registry entry"),
        ([{"name": "r1", "model": "deepseek-r1", "replicas": 2}], None,
         "cluster_deployments: deployment 'r1' replica 2 of 2 needs 16 device(s)"),
        ([{"name": "r1", "model": "deepseek-r1"}],
         {"vars": {"cluster_runtime": "native", "cluster_executor": "mp"}},
         "cluster_executor = 'mp': replica 1 of 'r1' spans nodes h100-01, h100-02, and a replica across "
         "nodes beside other engines runs under the Ray executor"),
        ([{"name": "deepseek-r1", "model": "deepseek-r1"}], {"MODEL_NAME": "gpt-oss-120b"},
         "MODEL_NAME = 'gpt-oss-120b' is set, but cluster_deployments decides what is served"),
    ],
    ids=["input-rules", "does-not-fit", "spanning-renamed-mp", "model-name"],
)
def test_the_validate_play_refuses_before_the_registry_check(tmp_path, deployments, env, message):
    proc = _validate(tmp_path, deployments, env)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert message in proc.stdout, proc.stdout[-3000:]
    assert "Check the model registry" not in proc.stdout, "the deployment rules must come first"


def test_the_validate_play_serves_one_deployment_as_cluster_model_and_shows_where(tmp_path):
    # the other example's default model, so the deployment (not cluster_default_model) decides
    proc = _validate(tmp_path, [{"name": "gpt-oss-120b", "model": "gpt-oss-120b"}])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "model gpt-oss-120b: 2 device(s) over 1 of 2 node(s)" in proc.stdout
    assert "gpt-oss-120b  1        gpt-oss-120b  h100-01  0,1" in proc.stdout


def test_the_validate_play_places_replica_engines_and_needs_the_api_proxy(tmp_path):
    deployments = [{"name": "chat", "model": "gpt-oss-120b", "replicas": 2},
                   {"name": "small", "model": "llama-3.1-8b-instruct", "replicas": 3}]
    native = {"vars": {"cluster_runtime": "native"}}  # the example runs containers
    proc = _validate(tmp_path / "ok", deployments, native)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "- small       3        llama-3.1-8b-instruct  h100-01  3" in proc.stdout, proc.stdout[-3000:]
    refused = _validate(tmp_path / "no-proxy", deployments,
                        {"vars": {"cluster_runtime": "native", "cluster_api_proxy": False,
                                  "cluster_api_tls": False}})
    assert refused.returncode == 2
    assert ("cluster_api_proxy = false: replica engines (5 from cluster_deployments) are served through the "
            "API proxy and the router behind it; allowed with replica engines: true") in refused.stdout


# --------------------------------------------------------------------------
# servekit render --inventory (the inventory read by ansible-inventory; no host contacted)
# --------------------------------------------------------------------------

SERVEKIT = str(BIN / "servekit")


def _render(inventory, *args, env: dict | None = None):
    return run([SERVEKIT, "render", "-i", inventory, *args], timeout=120,
               env={**{k: v for k, v in os.environ.items() if k != "MODEL_NAME"}, **(env or {})})


def test_render_shows_the_default_placement_of_an_inventory_without_deployments():
    proc = _render(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        "DEPLOYMENT   REPLICA  MODEL        NODE     DEVICES",
        "deepseek-r1  1        deepseek-r1  h100-01  0,1,2,3,4,5,6,7",
        "deepseek-r1  1        deepseek-r1  h100-02  0,1,2,3,4,5,6,7",
    ]


def test_render_shows_the_deployments_placement(tmp_path):
    inv = tmp_path / "inv"
    shutil.copytree(EXAMPLE, inv)
    (inv / "group_vars" / "all" / "deployments.yml").write_text(yaml.safe_dump({"cluster_deployments": [
        {"name": "gpt-oss-120b", "model": "gpt-oss-120b", "replicas": 2}], "cluster_runtime": "native"}))
    proc = _render(inv, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert [(r["replica"], r["devices"]) for r in found["placement"]] == [
        (0, {"h100-01": [0, 1]}), (1, {"h100-02": [0, 1]})]
    assert found["engines"] == 2 and found["not_served"] == []
    text = _render(inv)
    assert "# not served yet" not in text.stdout
    refused = _render(inv, env={"MODEL_NAME": "lab-tiny"})
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "servekit: error: MODEL_NAME = 'lab-tiny' is set, but cluster_deployments decides"), refused.stderr


def _commented_deployments() -> list[list]:
    """Every commented-out ``cluster_deployments:`` block of the example's cluster.yml, uncommented."""
    blocks, current = [], None
    for line in (EXAMPLE / "group_vars" / "all" / "cluster.yml").read_text().splitlines():
        if line == "# cluster_deployments:":
            current = [line[2:]]
            blocks.append(current)
        elif current is not None and line.startswith("#   "):
            current.append(line[2:])
        else:
            current = None
    return [yaml.safe_load("\n".join(block))["cluster_deployments"] for block in blocks]


def test_the_h100_example_deployments_use_all_16_gpus_and_pass_validate(tmp_path):
    one_engine, replicas = _commented_deployments()
    devices = {"h100-01": 8, "h100-02": 8}
    for deployments in (one_engine, replicas):
        placed = plan(deployments, MODELS, devices)
        assert sorted((n, d) for r in placed for n, idx in r.devices for d in idx) == sorted(
            (n, d) for n in devices for d in range(8)), "every GPU once"
    passes = _validate(tmp_path / "one", one_engine)
    assert passes.returncode == 0, passes.stdout[-3000:]
    assert "model deepseek-r1: 16 device(s) over 2 of 2 node(s)" in passes.stdout
    # replica engines on the example's container runtime, and on the native one
    eight = _validate(tmp_path / "eight", replicas)
    assert eight.returncode == 0, eight.stdout[-3000:]
    native = _validate(tmp_path / "eight-native", replicas, {"vars": {"cluster_runtime": "native"}})
    assert native.returncode == 0, native.stdout[-3000:]
