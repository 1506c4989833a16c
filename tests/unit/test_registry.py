"""Registry loading, validation and rendering (module_utils/vllm_registry.py)."""

from __future__ import annotations

import textwrap

import pytest
from servekit.module_utils.vllm_registry import (
    NodeSpec,
    RegistryError,
    build_launch_plan,
    closest_flag,
    load_registry_file,
    load_registry_text,
    ready_timeout,
    registry_args,
    render_unit,
    select_model,
    systemd_quote,
    validate_registry,
)

SEED_20B = {
    "model": "openai/gpt-oss-20b",
    "dtype": "bfloat16",
    "tensor-parallel-size": 2,
    "gpu-memory-utilization": 0.35,
    "max-num-seqs": 8,
    "max-model-len": 131072,
    "description": "Lightweight",
}


def _registry(**entry_overrides: object) -> dict:
    entry = dict(SEED_20B)
    for name, value in entry_overrides.items():
        key = name.replace("_", "-")
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return {"models": {"gpt-oss-20b": entry}}


def test_shipped_registry_has_the_seed_entry(registry_path):
    models = load_registry_file(str(registry_path))
    assert models["gpt-oss-20b"] == SEED_20B
    assert "lab-tiny" in models


def test_seed_entry_renders_the_seed_flags_in_order():
    assert registry_args(SEED_20B) == [
        "--dtype", "bfloat16",
        "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.35",
        "--max-num-seqs", "8",
        "--max-model-len", "131072",
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"enforce-eager": True}, ["--enforce-eager"]),
        ({"enforce-eager": False}, []),
        ({"served-model-name": ["a", "b"]}, ["--served-model-name", "a", "b"]),
        ({"hf-overrides": {"rope_scaling": {"factor": 4}}},
         ["--hf-overrides", '{"rope_scaling":{"factor":4}}']),
        ({"description": "skipped"}, []),
        ({"max-model-len": 4096}, ["--max-model-len", "4096"]),
        ({"ready-timeout": 3600}, []),
    ],
    ids=["true-is-bare-flag", "false-omitted", "nargs-list", "dict-json", "description", "int",
         "ready-timeout-is-servekits"],
)
def test_key_to_flag_mapping(entry, expected):
    assert registry_args({"model": "m", **entry}) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  a:\n    model: x\n   dtype: bad-indent\n", "YAML syntax error at line 4"),
        ("models: [unclosed\n", "YAML syntax error at line 2"),
        ("other: {}\n", "top-level key 'models' is missing"),
        ("", "top-level key 'models' is missing"),
        ("models: {}\n", "'models' must be a non-empty mapping"),
        ("models:\n  a: {model: x}\nextra: 1\n", "unknown top-level key(s) extra; allowed: models"),
        ("models:\n  a: {model: x}\n  a: {model: y}\n", "line 3: duplicate key 'a'"),
        ("models:\n  a: just-a-string\n", "model 'a' must be a mapping"),
        ("models:\n  a: {dtype: auto}\n", "model 'a': key 'model' is required"),
    ],
    ids=["bad-indent", "unclosed-flow", "no-models", "empty-file", "empty-models",
         "extra-top-level", "duplicate-model", "entry-not-mapping", "missing-model-key"],
)
def test_malformed_registry_text(text, message):
    with pytest.raises(RegistryError) as err:
        load_registry_text(text, "reg.yml")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tensor_parallel_sze": 2},
         "model 'gpt-oss-20b': unknown key 'tensor-parallel-sze' (not a flag of vLLM"),
        ({"tensor_parallel_size": "two"},
         "key 'tensor-parallel-size' must be an integer, got string 'two'"),
        ({"tensor_parallel_size": True}, "key 'tensor-parallel-size' takes a int value"),
        ({"tensor_parallel_size": 0}, "key 'tensor-parallel-size' is 0; allowed: an integer >= 1"),
        ({"pipeline_parallel_size": -1}, "'pipeline-parallel-size' is -1; allowed: an integer >= 1"),
        ({"gpu_memory_utilization": 0}, "'gpu-memory-utilization' is 0; allowed: a number in (0, 1]"),
        ({"gpu_memory_utilization": 1.5}, "'gpu-memory-utilization' is 1.5; allowed: a number in (0, 1]"),
        ({"gpu_memory_utilization": "high"}, "'gpu-memory-utilization' must be a number"),
        ({"max_model_len": 0}, "'max-model-len' is 0; allowed: an integer > 0"),
        ({"max_model_len": -5}, "'max-model-len' is -5; allowed: an integer > 0"),
        ({"max_num_seqs": 2.5}, "'max-num-seqs' must be an integer, got number 2.5"),
        ({"dtype": "bf16"}, "key 'dtype' is 'bf16'; allowed values: auto, bfloat16, float"),
        ({"enforce_eager": "yes"}, "key 'enforce-eager' must be true or false, got string 'yes'"),
        ({"description": 3}, "key 'description' must be a string"),
        ({"port": 9000}, "key 'port' is set by the launcher from cluster_api_port"),
        ({"distributed_executor_backend": "mp"}, "set by the launcher from cluster_executor"),
        ({"api_key": "secret"}, "key 'api-key' is set by the launcher"),
        ({"headless": True}, "key 'headless' is set by the launcher"),
        ({"max_num_seqs": None, "max-num-seqs": None, "dtype": None, "model": None},
         "key 'model' is required"),
        ({"ready_timeout": 5},
         "model 'gpt-oss-20b': key 'ready-timeout' is 5; allowed: an integer number of seconds, 10..86400"),
        ({"ready_timeout": 90000},
         "key 'ready-timeout' is 90000; allowed: an integer number of seconds, 10..86400"),
        ({"ready_timeout": "1h"}, "key 'ready-timeout' is '1h'; allowed: an integer number of seconds"),
        ({"ready_timeout": True}, "key 'ready-timeout' is True; allowed: an integer number of seconds"),
    ],
    ids=["unknown-key", "str-for-int", "bool-for-int", "tp-zero", "pp-negative", "gmu-zero",
         "gmu-above-one", "gmu-string", "mml-zero", "mml-negative", "float-for-int",
         "bad-dtype-choice", "bool-as-string", "description-type", "launcher-port", "launcher-executor",
         "launcher-api-key", "launcher-headless", "no-model", "ready-timeout-short",
         "ready-timeout-long", "ready-timeout-string", "ready-timeout-bool"],
)
def test_bad_entry_names_model_key_and_allowed_values(overrides, message):
    with pytest.raises(RegistryError) as err:
        validate_registry(_registry(**overrides))
    assert message in str(err.value)


def test_ready_timeout_is_the_entrys_own_else_the_default(registry_path):
    models = load_registry_file(str(registry_path))
    assert ready_timeout(models["gpt-oss-20b"], 900) == 900
    # DeepSeek-R1 on 2 x 8 H100 loads ~345 GB per pipeline stage, then runs
    # DeepGEMM's warmup, torch.compile and CUDA-graph capture (registry comment).
    assert ready_timeout(models["deepseek-r1"], 900) >= 2400


def test_unknown_key_suggests_the_closest_vllm_flag():
    with pytest.raises(RegistryError, match="did you mean 'tensor-parallel-size'"):
        validate_registry(_registry(tensor_paralel_size=2))


@pytest.mark.parametrize(
    ("key", "flag"),
    [
        ("tensor_parallel_size", "tensor-parallel-size"),
        ("--max-model-len", "max-model-len"),
        ("gpu-memory-utilisation", "gpu-memory-utilization"),
        ("max-num-seq", "max-num-seqs"),
        ("zzzzzzzz", None),
    ],
)
def test_closest_flag(key, flag):
    assert closest_flag(key) == flag


@pytest.mark.parametrize("name", ["missing", "", None])
def test_unknown_model_lists_the_existing_ones(name):
    with pytest.raises(RegistryError) as err:
        select_model({"b": {}, "a": {}}, name)
    assert str(err.value).endswith("available models: a, b")


def _plan(entry=SEED_20B, **node):
    return build_launch_plan("gpt-oss-20b", entry, NodeSpec(**node))


def test_ray_head_serves_with_ray_executor_and_workers_run_none():
    head = _plan(nnodes=2, host_address="192.168.100.1", head_address="192.168.100.1")
    assert head.active and head.role == "head"
    assert head.argv[:3] == ["vllm", "serve", "openai/gpt-oss-20b"]
    tail = head.argv[head.argv.index("--distributed-executor-backend"):]
    assert tail == ["--distributed-executor-backend", "ray", "--host", "0.0.0.0", "--port", "8000"]
    assert head.env == {"VLLM_HOST_IP": "192.168.100.1"}
    worker = _plan(nnodes=2, node_rank=1)
    assert not worker.active and worker.argv == [] and worker.role == "worker"


def test_mp_multinode_head_and_headless_worker():
    head = _plan(nnodes=2, executor="mp", head_address="10.0.0.1")
    worker = _plan(nnodes=2, node_rank=1, executor="mp", head_address="10.0.0.1")
    common = ["--distributed-executor-backend", "mp", "--nnodes", "2"]
    assert head.argv[head.argv.index("--distributed-executor-backend"):] == [
        *common, "--node-rank", "0", "--master-addr", "10.0.0.1", "--master-port", "29501",
        "--host", "0.0.0.0", "--port", "8000"]
    assert worker.argv[worker.argv.index("--distributed-executor-backend"):] == [
        *common, "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29501",
        "--headless"]


def test_mp_model_on_one_node_leaves_the_others_idle():
    plan = _plan(nnodes=3, devices_per_node=2, node_rank=1, executor="mp")
    assert plan.role == "idle" and not plan.active
    head = _plan(nnodes=3, devices_per_node=2, executor="mp")
    assert "--nnodes" not in head.argv and head.topology.nodes_used == 1


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"nnodes": 1}, "= 2 devices, but the inventory offers 1 (1 node(s) x 1 per node)"),
        ({"nnodes": 4, "devices_per_node": 0}, "devices_per_node is 0; allowed: an integer >= 1"),
        ({"nnodes": 2, "node_rank": 2}, "node_rank 2 is outside the cluster; allowed: 0..1"),
        ({"nnodes": 2, "executor": "slurm"}, "allowed values: ray, mp"),
        ({"nnodes": 2, "runtime": "k8s"}, "allowed values: native, container"),
        ({"nnodes": 2, "api_port": 70000}, "api_port is 70000; allowed: 1..65535"),
        ({"nnodes": 2, "head_address": ""}, "head_address is empty"),
    ],
)
def test_bad_node_input(node, message):
    with pytest.raises(RegistryError) as err:
        _plan(**node)
    assert message in str(err.value)


def test_world_size_must_fill_whole_nodes():
    entry = dict(SEED_20B, **{"tensor-parallel-size": 3})
    with pytest.raises(RegistryError, match="not a multiple of the 2 devices per node"):
        build_launch_plan("x", entry, NodeSpec(nnodes=2, devices_per_node=2))


def test_pipeline_parallel_counts_towards_world_size():
    entry = dict(SEED_20B, **{"pipeline-parallel-size": 2})
    with pytest.raises(RegistryError, match=r"\(2\) x pipeline-parallel-size \(2\) = 4 devices"):
        build_launch_plan("x", entry, NodeSpec(nnodes=2))


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("plain", "plain"),
        ('{"a":1}', '"{\\"a\\":1}"'),
        ("two words", '"two words"'),
        ("100%", "100%%"),
        ("$HOME", "$$HOME"),
    ],
)
def test_systemd_quote(word, quoted):
    assert systemd_quote(word) == quoted


def test_unit_carries_env_restart_policy_and_memlock():
    plan = _plan(nnodes=2, executor="mp", host_address="10.0.0.1",
                 head_address="10.0.0.1")
    plan.env["GLOO_SOCKET_IFNAME"] = "host0"
    unit = render_unit(plan, environment_files=["/etc/servekit/vllm.env"], after=["ray.service"])
    assert textwrap.dedent("""\
        Environment=GLOO_SOCKET_IFNAME=host0
        Environment=VLLM_HOST_IP=10.0.0.1
        """) in unit
    assert "EnvironmentFile=-/etc/servekit/vllm.env\n" in unit
    assert "After=network-online.target ray.service\n" in unit
    assert "LimitMEMLOCK=infinity\n" in unit
    assert "Restart=always\n" in unit
    assert "ExecStartPre" not in unit
    assert "StartLimitBurst=5\n" in unit
    assert "ExecStart=vllm serve openai/gpt-oss-20b --dtype bfloat16" in unit


def test_unit_carries_the_checksums_of_files_read_at_start():
    plan = build_launch_plan("gpt-oss-20b", SEED_20B, NodeSpec(nnodes=1, devices_per_node=2))
    unit = render_unit(plan, environment_files=["/etc/servekit/cluster.env"],
                       checksums={"/etc/servekit/cluster.env": "da39a3ee5e6b4b0d3255bfef95601890afd80709"})
    assert ("# /etc/servekit/cluster.env sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709: read at start; "
            "a change rewrites this unit\n[Unit]\n") in unit
    assert "sha1" not in render_unit(plan)
