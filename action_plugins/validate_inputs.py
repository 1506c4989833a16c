"""Check every node's role inputs on the control node, before any host is touched."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
---
action: validate_inputs
short_description: Check every node's role inputs against argument_specs and input_rules
description:
  - Runs on the control node. For every node of the head and workers groups it
    overlays the node's inventory variables on all roles' defaults, templates
    each value where it resolves on the control node (values that need facts
    are skipped), and checks types, choices, ranges, formats and relations
    (module_utils/input_rules.py, roles/*/meta/argument_specs.yml and input_rules.yml).
  - Fails with every problem at once, naming the variable, the value (secrets
    read <hidden>), the allowed range, form or choices, and the nodes it is set for.
  - Inventory variables with a role prefix that no role takes are warnings,
    or errors with strict.
options:
  nodes:
    description: Hosts to check; default every host of the head and workers groups.
    type: list
    elements: str
  strict:
    description: Unknown role-prefixed variables fail the task instead of warning.
    type: bool
    default: false
"""

ROOT = Path(__file__).resolve().parents[1]


def _input_rules():
    """module_utils/input_rules.py, loaded by path (it is also servekit.module_utils.input_rules)."""
    name = "servekit_input_rules"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "module_utils" / "input_rules.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("nodes", "strict"))

    def run(self, tmp: Any = None, task_vars: dict | None = None) -> dict:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        rules = _input_rules()
        ruleset = rules.load_rules(ROOT / "roles")
        groups = task_vars.get("groups", {})
        nodes = self._task.args.get("nodes") or (groups.get("head", []) + groups.get("workers", []))
        strict = boolean(self._task.args.get("strict", False), strict=False)
        defaults = self._role_defaults()

        errors: dict[str, list[str]] = {}
        unknown: dict[str, list[str]] = {}
        skipped: set[str] = set()
        for node in nodes:
            values, names = self._node_values(node, task_vars, defaults, ruleset, skipped)
            for problem in rules.check_values(ruleset, values):
                errors.setdefault(problem, []).append(node)
            for problem in rules.unknown_variables(ruleset, names):
                unknown.setdefault(problem, []).append(node)
            # an old name would be ignored without a word: always an error
            for problem in rules.renamed_variables(ruleset, names):
                errors.setdefault(problem, []).append(node)

        def lines(found: dict[str, list[str]]) -> list[str]:
            return [f"{problem} (set for {', '.join(hosts)})" for problem, hosts in found.items()]

        result.update(changed=False, checked_nodes=list(nodes), skipped_variables=sorted(skipped))
        if strict:
            errors.update(unknown)
        elif unknown:
            result["warnings"] = [*lines(unknown),
                                  "set cluster_strict_inputs: true to make unknown inputs an error"]
        if errors:
            result["failed"] = True
            result["msg"] = (f"inventory: {len(errors)} bad role input(s), found before any host was "
                             f"touched: " + "; ".join(lines(errors)))
        else:
            result["msg"] = f"role inputs of {len(nodes)} node(s) pass argument_specs and input_rules"
        return result

    def _role_defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        for path in sorted((ROOT / "roles").glob("*/defaults/main.yml")):
            # the loader marks the file's templates trusted, as for a role's own defaults
            defaults.update(self._loader.load_from_file(str(path), trusted_as_template=True) or {})
        return defaults

    def _node_values(self, node: str, task_vars: dict, defaults: dict, ruleset: Any,
                     skipped: set[str]) -> tuple[dict[str, Any], set[str]]:
        """The node's effective values where they resolve here, and its inventory variable names."""
        hostvars = task_vars["hostvars"]
        own = dict(hostvars.raw_get(node))
        facts = set(own.get("ansible_facts") or {})
        names = {n for n in own if n not in facts and not n.startswith("ansible_")}
        variables = dict(defaults)
        variables.update(own)
        variables.setdefault("playbook_dir", task_vars.get("playbook_dir"))
        variables.update(hostvars=hostvars, groups=task_vars.get("groups", {}), inventory_hostname=node)
        templar = self._templar.copy_with_new_env(available_variables=variables)
        wanted = set(ruleset.options) | set(ruleset.rules)
        for relation in ruleset.relations:
            wanted.update(_relation_names(relation))
        values: dict[str, Any] = {}
        for name in sorted(wanted & set(variables)):
            try:
                values[name] = templar.template(variables[name])
            except AnsibleError:
                skipped.add(name)  # needs facts or another value unknown on the control node
        return values, names


def _relation_names(relation: dict) -> list[str]:
    return _input_rules().relation_vars(relation)
