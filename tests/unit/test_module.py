"""The vllm_launch module, run by ansible-playbook on the control node.

These go through Ansible for real (argument spec, check mode, diff,
idempotence, module_utils shipping), not through a mocked AnsibleModule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ansible, ansible_playbook, run_tasks, write_play

ROOT = Path(__file__).resolve().parents[2]


def launch(**params):
    base = {"registry_path": str(ROOT / "config" / "model_registry.yml")}
    return {"vllm_launch": dict(base, **params)}


# The module's cases below in two ansible-playbook runs (tests/helpers.py run_tasks)
# instead of one per task: the sequence on one unit file (write, again, switch,
# retire, a foreign unit), then the independent cases, each on its own file.
BAD_INPUT = [
    ({"model": "nope"}, "unknown model 'nope'; available models: deepseek-r1, gpt-oss-120b, gpt-oss-20b"),
    ({"model": "gpt-oss-20b", "nnodes": 1}, "but the inventory offers 1"),
    ({"model": "gpt-oss-20b", "nnodes": 2, "executor": "slurm"},
     "value of executor must be one of: ray, mp, got: slurm"),
]
BAD_YAML = "models:\n  a:\n    model: x\n   dtype: auto\n"


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """Unit files through their life, in one run: what each step returned, and the worker's file."""
    tmp = tmp_path_factory.mktemp("sequence")
    worker = tmp / "units" / "worker.service"
    dest = tmp / "vllm.service"
    worker_task = launch(model="lab-tiny", node_rank=1, nnodes=2, executor="mp",
                         head_address="10.0.0.1", host_address="10.0.0.2", dest=str(worker))
    switch = launch(model="gpt-oss-20b", nnodes=2, dest=str(dest))
    steps = {
        "worker": worker_task, "worker-again": worker_task,
        "fresh": launch(model="lab-tiny", nnodes=2, executor="mp", dest=str(dest)),
        "switch-check": dict(switch, check_mode=True),
        "switch": switch,
        "again": switch,
        # a worker that no longer runs the model: its unit is removed, the model it ran still named
        "retired": launch(model="gpt-oss-20b", node_rank=1, nnodes=2, dest=str(dest)),
        "foreign-unit": {"ansible.builtin.copy": {"content": "[Unit]\nDescription=someone else's vLLM\n",
                                                  "dest": str(dest), "mode": "0644"}},
        "foreign": switch,
    }
    results = run_tasks(tmp, list(steps.values()))
    return dict(zip(steps, results, strict=True)), worker


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """The independent cases, each on its own file, in one run: name -> (result, its unit file)."""
    tmp = tmp_path_factory.mktemp("cases")
    (tmp / "reg.yml").write_text(BAD_YAML)
    (tmp / "old.service").write_text("old unit\n")
    registry = yaml.safe_load((ROOT / "config" / "model_registry.yml").read_text())
    tasks = {  # name -> (task, the unit file it writes or removes)
        # the dry run with --diff: check mode and diff on this task alone
        "check-diff": (dict(launch(model="gpt-oss-20b", nnodes=2, dest=str(tmp / "check.service")),
                            check_mode=True, diff=True), tmp / "check.service"),
        "inactive": (launch(model="gpt-oss-20b", node_rank=1, nnodes=2, dest=str(tmp / "old.service")),
                     tmp / "old.service"),
        "registry-dict": ({"vllm_launch": {"registry": registry, "model": "gpt-oss-20b", "nnodes": 2}}, None),
        "bad-yaml": ({"vllm_launch": {"registry_path": str(tmp / "reg.yml"), "model": "a"}}, None),
        **{f"bad-{i}": (launch(dest=str(tmp / f"bad-{i}.service"), **params), tmp / f"bad-{i}.service")
           for i, (params, _) in enumerate(BAD_INPUT)},
    }
    results = run_tasks(tmp, [task for task, _ in tasks.values()])
    return {name: (result, path) for (name, (_, path)), result in zip(tasks.items(), results, strict=True)}


def test_writes_unit_then_is_idempotent(sequence):
    steps, dest = sequence
    first, second = steps["worker"], steps["worker-again"]
    assert not first.get("failed") and first["changed"] is True
    assert dest.read_text() == first["unit"]
    assert first["unit"].startswith(
        "#\n# Ansible managed\n#\n# Managed by servekit (vllm_launch): model lab-tiny")
    assert "unit_vars" not in first, "the template's variables stay inside the action plugin"
    assert "--headless" in first["argv"] and first["role"] == "worker"
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    assert not second.get("failed") and second["changed"] is False


def test_check_mode_reports_diff_without_writing(cases):
    result, dest = cases["check-diff"]
    assert not result.get("failed") and result["changed"] is True
    assert not dest.exists()
    assert result["diff"]["before"] == "" and "ExecStart=vllm serve" in result["diff"]["after"]


def test_inactive_node_retires_an_old_unit(cases):
    result, dest = cases["inactive"]
    assert not result.get("failed") and result["changed"] and not result["active"]
    assert not dest.exists()


def test_returns_the_model_the_unit_ran_before_a_switch(sequence):
    """The rollback restores and probes this model: read from the unit before it is rewritten."""
    steps, _ = sequence
    assert not any(step.get("failed") for step in steps.values()), steps
    assert steps["fresh"]["previous_model"] is None, "no unit there before"
    switch = steps["switch-check"]
    assert switch["changed"] and switch["previous_model"] == "lab-tiny"
    assert steps["switch"]["previous_model"] == "lab-tiny"
    again = steps["again"]
    assert again["previous_model"] == "gpt-oss-20b" and not again["changed"]
    # a worker that no longer runs the model: its unit is removed, the model it ran still named
    retired = steps["retired"]
    assert not retired["active"] and retired["previous_model"] == "gpt-oss-20b"
    assert steps["foreign"]["previous_model"] is None


def test_registry_dict_is_accepted_and_returned(cases):
    registry = yaml.safe_load((ROOT / "config" / "model_registry.yml").read_text())
    result, _ = cases["registry-dict"]
    assert not result.get("failed")
    assert result["registry"] == registry
    assert result["models"] == sorted(registry["models"])


@pytest.mark.parametrize(("case", "message"),
                         [(f"bad-{i}", message) for i, (_, message) in enumerate(BAD_INPUT)])
def test_bad_input_fails_with_named_field(cases, case, message):
    result, dest = cases[case]
    assert result["failed"]
    assert message in result["msg"]
    assert not dest.exists()


def test_yaml_error_reports_line(cases):
    result, _ = cases["bad-yaml"]
    assert result["failed"] and "YAML syntax error at line 4" in result["msg"]


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


def test_top_level_templates_start_with_the_roles_header():
    """templates/ holds what the launch module renders and no role owns, with the roles' header."""
    templates = sorted((ROOT / "templates").glob("*.j2"))
    assert [t.name for t in templates] == ["vllm-launch.service.j2"]
    for template in templates:
        assert template.read_text().startswith("{{ ansible_managed | comment }}\n"), (
            f"{template.name}: start with {{{{ ansible_managed | comment }}}}, as the roles' templates do")


@pytest.mark.parametrize(("missing", "message"), [
    ("templates", "template vllm-launch.service.j2 not found in"),
    # the module alone (no action plugin) cannot write a unit: it has no template to render
    ("action_plugins", "dest needs the unit text that this module's action plugin renders"),
])
def test_fails_clearly_without_the_unit_template(tmp_path, missing, message):
    import shutil

    for item in ("ansible.cfg", "library", "module_utils", "action_plugins", "templates", "config"):
        if item != missing:
            (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, tmp_path / item)
    task = launch(model="lab-tiny", devices_per_node=2, dest=str(tmp_path / "vllm.service"))
    task["vllm_launch"]["registry_path"] = str(tmp_path / "config" / "model_registry.yml")
    play = write_play(tmp_path / "play.yml", [{"hosts": "localhost", "connection": "local",
                                                "gather_facts": False, "tasks": [task]}])
    proc = ansible_playbook(play, project=tmp_path, env={"ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode != 0
    assert message in " ".join(proc.stdout.split()), proc.stdout[-2000:]
    assert not (tmp_path / "vllm.service").exists()
