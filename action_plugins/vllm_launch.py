"""vllm_launch's control-node half: the module plans on the host, the unit's text comes from templates/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

ROOT = Path(__file__).resolve().parents[1]


def _unit_template():
    """module_utils/unit_template.py, loaded by path (it is also servekit.module_utils.unit_template)."""
    name = "servekit_unit_template"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "module_utils" / "unit_template.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class ActionModule(ActionBase):
    """Plan with the module, render ``templates/vllm-launch.service.j2`` here, then write with the module.

    Managed nodes have no copy of the project's templates/ (and need not have
    Jinja2), so the module returns the template's variables (``unit_vars``) and
    the unit is rendered here with the play's Templar, the way the template
    module renders the roles' templates. With ``dest`` the module runs a second
    time and writes the rendered text (``_unit``): diff, check mode and mode as
    before. Without ``dest`` it runs once.
    """

    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict | None = None) -> dict:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        templates = _unit_template()
        try:
            template = templates.template_path(templates.LAUNCH_UNIT, (ROOT / "templates",))
        except templates.TemplateMissing as exc:
            return dict(result, failed=True, msg=str(exc))
        args = {key: value for key, value in self._task.args.items() if key != "_unit"}
        planned = self._execute_module("vllm_launch", task_vars=task_vars, module_args={
            key: value for key, value in args.items() if key not in ("dest", "mode")})
        variables = planned.pop("unit_vars", None)
        if planned.get("failed"):
            return dict(result, **planned)
        unit = ""
        if variables is not None:
            if "ansible_managed" in task_vars:  # the roles' templates honour it too
                variables = dict(variables, ansible_managed=task_vars["ansible_managed"])
            unit = templates.render_template(template, variables, templar=self._templar)
        if not args.get("dest"):
            return dict(result, **dict(planned, unit=unit))
        written = self._execute_module("vllm_launch", task_vars=task_vars, module_args=dict(args, _unit=unit))
        written.pop("unit_vars", None)
        return dict(result, **written)
