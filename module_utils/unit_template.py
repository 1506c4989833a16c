"""Render the project's top-level templates (``templates/*.j2``) on the control node.

The text of what the launch module writes and no role owns (the vLLM launch
unit) lives in Jinja templates under ``templates/``, with the roles' header
(``{{ ansible_managed | comment }}``). They are rendered the way the template
module renders the roles' templates: Ansible's Templar, ``trim_blocks``, the
``ansible_managed`` of the configuration. Controller-side only (it needs
ansible-core's templating): ``action_plugins/vllm_launch.py`` loads this file by
path, the servekit CLI imports it as ``servekit.module_utils.unit_template``;
no module imports it, so no module payload carries it.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# A checkout (and the wheel's project copy) has templates/ beside module_utils/;
# the installed package servekit.module_utils finds it in servekit/_project.
TEMPLATE_DIRS = (_HERE.parent / "templates", _HERE.parent / "_project" / "templates")


# The vLLM launch unit (module_utils/vllm_registry.py unit_vars gives its variables).
LAUNCH_UNIT = "vllm-launch.service.j2"


class TemplateMissing(FileNotFoundError):
    """A template the launch module renders is not in the project's templates/."""


def template_path(name: str, dirs: tuple[Path, ...] = TEMPLATE_DIRS) -> Path:
    """The first ``dirs/name`` that exists; TemplateMissing names every place looked."""
    for directory in dirs:
        if (directory / name).is_file():
            return directory / name
    raise TemplateMissing(
        f"template {name} not found in {', '.join(str(d) for d in dirs)}: the launch unit's text lives "
        "in the project's top-level templates/ (ship it with library/ and action_plugins/)")


def render_template(path: Path, variables: dict, templar: object | None = None) -> str:
    """``path`` rendered with ``variables`` as the template module would (same header, trim_blocks).

    ``templar``: the play's (an action plugin's ``self._templar``), so the task's
    variables and ``ansible_managed`` setting apply; a fresh one otherwise.
    """
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, generate_ansible_template_vars, trust_as_template

    if templar is None:
        templar = Templar(loader=DataLoader())
    context = dict(generate_ansible_template_vars(path.name, str(path)), **variables)
    env_templar = templar.copy_with_new_env(searchpath=[str(path.parent)], available_variables=context)
    text = trust_as_template(path.read_text(encoding="utf-8"))
    rendered = env_templar.template(text, escape_backslashes=False, overrides={"trim_blocks": True})
    return rendered or ""
