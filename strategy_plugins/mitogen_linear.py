"""Mitogen's ``linear`` strategy, taken from the installed ``ansible_mitogen``.

ansible.cfg names this folder in ``strategy_plugins`` so that the default
strategy works wherever servekit's Python has Mitogen (pinned in pyproject),
without a path into one particular venv's site-packages. It does what
Mitogen's own proxy module does (ansible_mitogen/plugins/strategy/
mitogen_linear.py in mitogen 0.3.54): import the real strategy under its
canonical name, so PluginLoader does not load Mitogen's modules twice.

Switch back to Ansible's own strategy with ``ANSIBLE_STRATEGY=linear``
(docs/performance.md says when and what Mitogen does not cover).
"""

from __future__ import annotations

from ansible.errors import AnsibleError

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError as exc:  # pragma: no cover - depends on the installing venv
    raise AnsibleError(
        "servekit runs Ansible with Mitogen's mitogen_linear strategy (ansible.cfg), but this Python "
        f"cannot import it ({exc}). Install the project's pinned dependencies (make venv, or "
        "pip install servekit), or run with ANSIBLE_STRATEGY=linear."
    ) from exc

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    """Ansible's linear strategy, its connections and module runs through Mitogen."""
