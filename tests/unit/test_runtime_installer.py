"""Which installer builds the node venv (roles/runtime/tasks/installer.yml), run by Ansible on localhost."""

from __future__ import annotations

import sys

import pytest
from helpers import ansible_playbook, write_play


@pytest.mark.parametrize(
    ("installer", "links", "wheel", "uv"),
    [
        ("auto", ["{wheelhouse}"], True, True),   # the lab: uv's wheel in the wheelhouse
        ("auto", ["{wheelhouse}"], False, False),
        ("auto", ["https://mirror.invalid/wheels/"], False, False),  # a URL is not searched
        ("auto", [], False, False),                # pip's default index
        ("uv", [], False, True),
        ("pip", ["{wheelhouse}"], True, False),
    ],
    ids=["auto-wheel", "auto-no-wheel", "auto-url", "auto-index", "uv", "pip"],
)
def test_the_venv_installer_choice(tmp_path, installer, links, wheel, uv):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").touch()
    if wheel:
        (wheelhouse / "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").touch()
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable, "runtime_venv_installer": installer,
                 "runtime_pip_find_links": [link.format(wheelhouse=wheelhouse) for link in links]},
        "tasks": [
            {"ansible.builtin.include_role": {"name": "runtime", "tasks_from": "installer.yml"}},
            {"ansible.builtin.debug": {"msg": "USE_UV={{ __runtime_use_uv }}"}},
        ],
    }]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"USE_UV={uv}" in proc.stdout, proc.stdout[-3000:]
