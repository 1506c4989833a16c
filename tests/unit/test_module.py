"""The vllm_launch module, run by ansible-playbook on the control node.

These go through Ansible for real (argument spec, check mode, diff,
idempotence, module_utils shipping), not through a mocked AnsibleModule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ansible, run_task

ROOT = Path(__file__).resolve().parents[2]


def launch(**params):
    base = {"registry_path": str(ROOT / "config" / "model_registry.yml")}
    return {"vllm_launch": dict(base, **params)}


def test_writes_unit_then_is_idempotent(tmp_path):
    dest = tmp_path / "units" / "vllm.service"
    task = launch(model="lab-tiny", node_rank=1, nnodes=2, executor="mp",
                  head_address="10.0.0.1", host_address="10.0.0.2", dest=str(dest))
    rc, first = run_task(tmp_path, task)
    assert rc == 0 and first["changed"] is True
    assert dest.read_text() == first["unit"]
    assert "--headless" in first["argv"] and first["role"] == "worker"
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    rc, second = run_task(tmp_path, task)
    assert rc == 0 and second["changed"] is False


def test_check_mode_reports_diff_without_writing(tmp_path):
    dest = tmp_path / "vllm.service"
    rc, result = run_task(tmp_path, launch(model="gpt-oss-20b", nnodes=2, dest=str(dest)),
                          "--check", "--diff")
    assert rc == 0 and result["changed"] is True
    assert not dest.exists()
    assert result["diff"]["before"] == "" and "ExecStart=vllm serve" in result["diff"]["after"]


def test_inactive_node_retires_an_old_unit(tmp_path):
    dest = tmp_path / "vllm.service"
    dest.write_text("old unit\n")
    rc, result = run_task(tmp_path, launch(model="gpt-oss-20b", node_rank=1, nnodes=2,
                                           dest=str(dest)))
    assert rc == 0 and result["changed"] and not result["active"]
    assert not dest.exists()


def test_returns_the_model_the_unit_ran_before_a_switch(tmp_path):
    """The rollback restores and probes this model: read from the unit before it is rewritten."""
    dest = tmp_path / "vllm.service"
    rc, fresh = run_task(tmp_path, launch(model="lab-tiny", nnodes=2, executor="mp", dest=str(dest)))
    assert rc == 0 and fresh["previous_model"] is None, "no unit there before"
    rc, switch = run_task(tmp_path, launch(model="gpt-oss-20b", nnodes=2, dest=str(dest)), "--check")
    assert rc == 0 and switch["changed"] and switch["previous_model"] == "lab-tiny"
    rc, switch = run_task(tmp_path, launch(model="gpt-oss-20b", nnodes=2, dest=str(dest)))
    assert rc == 0 and switch["previous_model"] == "lab-tiny"
    rc, again = run_task(tmp_path, launch(model="gpt-oss-20b", nnodes=2, dest=str(dest)))
    assert rc == 0 and again["previous_model"] == "gpt-oss-20b" and not again["changed"]
    # a worker that no longer runs the model: its unit is removed, the model it ran still named
    rc, retired = run_task(tmp_path, launch(model="gpt-oss-20b", node_rank=1, nnodes=2, dest=str(dest)))
    assert rc == 0 and not retired["active"] and retired["previous_model"] == "gpt-oss-20b"
    dest.write_text("[Unit]\nDescription=someone else's vLLM\n")
    rc, foreign = run_task(tmp_path, launch(model="gpt-oss-20b", nnodes=2, dest=str(dest)))
    assert rc == 0 and foreign["previous_model"] is None


def test_registry_dict_is_accepted_and_returned(tmp_path):
    registry = yaml.safe_load((ROOT / "config" / "model_registry.yml").read_text())
    rc, result = run_task(tmp_path, {"vllm_launch": {"registry": registry, "model": "gpt-oss-20b",
                                                     "nnodes": 2}})
    assert rc == 0
    assert result["registry"] == registry
    assert result["models"] == sorted(registry["models"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "nope"}, "unknown model 'nope'; available models: deepseek-r1, gpt-oss-120b, gpt-oss-20b"),
        ({"model": "gpt-oss-20b", "nnodes": 1}, "but the inventory offers 1"),
        ({"model": "gpt-oss-20b", "nnodes": 2, "executor": "slurm"},
         "value of executor must be one of: ray, mp, got: slurm"),
    ],
)
def test_bad_input_fails_with_named_field(tmp_path, params, message):
    dest = tmp_path / "vllm.service"
    rc, result = run_task(tmp_path, launch(dest=str(dest), **params))
    assert rc != 0 and result["failed"]
    assert message in result["msg"]
    assert not dest.exists()


def test_yaml_error_reports_line(tmp_path):
    bad = tmp_path / "reg.yml"
    bad.write_text("models:\n  a:\n    model: x\n   dtype: auto\n")
    rc, result = run_task(tmp_path, {"vllm_launch": {"registry_path": str(bad), "model": "a"}})
    assert rc != 0 and "YAML syntax error at line 4" in result["msg"]


def test_every_module_documents_itself_and_its_check_and_diff_support():
    """`ansible-doc -M library <module>` works for each module, which declares its attributes."""
    modules = sorted(p.stem for p in (ROOT / "library").glob("*.py"))
    proc = ansible("ansible-doc", "-M", ROOT / "library", "--json", *modules, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = json.loads(proc.stdout)
    assert sorted(docs) == modules
    for name, doc in docs.items():
        attributes = doc["doc"].get("attributes") or {}
        assert {"check_mode", "diff_mode"} <= set(attributes), f"{name}: declare attributes: in DOCUMENTATION"
        assert attributes["check_mode"]["support"] in ("full", "partial", "none")
        assert doc["doc"]["short_description"] and doc["examples"] and doc["return"]
