"""ClusterView: head, nodes, API URL and key, ports, from an inventory over the roles' defaults."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible

from servekit.commands import cluster_view
from servekit.inventory import ClusterView, InventoryError, role_defaults

DEFAULTS = role_defaults(ROOT)
ROLE = {role: yaml.safe_load((ROOT / f"roles/{role}/defaults/main.yml").read_text())
        for role in ("cluster", "ray", "vllm")}
ENV = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


def _inventory(tmp_path: Path, head_vars: dict | None = None, worker_vars: dict | None = None,
               heads: tuple[str, ...] = ("node-a",)) -> Path:
    """A head and one worker under 'cluster', written where Ansible reads it."""
    hosts = {name: {"ansible_host": f"10.0.0.{i}", **(head_vars or {})} for i, name in enumerate(heads, 1)}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"cluster": {"children": {
        "head": {"hosts": hosts},
        "workers": {"hosts": {"node-b": {"ansible_host": "10.0.0.9", **(worker_vars or {})}}}}}}}}))
    return path


def _pure(head_vars: dict | None = None, worker_vars: dict | None = None) -> ClusterView:
    """A view over the role defaults without Ansible, for what the view itself decides."""
    base = {**DEFAULTS, "cluster_data_address": "10.0.0.1"}
    return ClusterView(inventory=ROOT / "x", head="node-a", workers=("node-b",), hostvars={
        "node-a": {**base, **(head_vars or {})}, "node-b": {**base, **(worker_vars or {})}})


def test_what_the_inventory_leaves_unset_comes_from_the_role_defaults(tmp_path):
    view = ClusterView.load(_inventory(tmp_path), ROOT, env=ENV)
    assert view.head == "node-a" and view.nodes == ("node-a", "node-b")
    assert view.api_port == ROLE["cluster"]["cluster_api_port"]
    # cluster_data_address defaults to "{{ ansible_host | default(inventory_hostname) }}"
    assert view.address() == "10.0.0.1" and view.address("node-b") == "10.0.0.9"
    # the proxy serves HTTPS by default (cluster_api_tls), verified with servekit's CA
    assert view.api_url == f"https://10.0.0.1:{ROLE['cluster']['cluster_api_port']}"
    state = ROOT / ".cache"
    assert view.api_ca_file(state) == state / "tls" / "ca.crt"
    assert view.default_model == ROLE["cluster"]["cluster_default_model"]
    assert view.api_key is None  # vllm_api_key: null
    ports = view.ports()
    assert ports["ray_dashboard_port"] == ROLE["ray"]["ray_dashboard_port"]
    assert ports["vllm_backend_port"] == ROLE["vllm"]["vllm_backend_port"]
    # a role default built from others, as the roles render it
    assert view.var("cluster_venv") == f"{ROLE['cluster']['cluster_root']}/venv"


def test_inventory_values_win_and_render_as_ansible_renders_them(tmp_path, monkeypatch):
    """Lookups, filters and nested templates: before, the CLI rendered with plain Jinja2 and an
    env or vault lookup reached `ask` and `status` as the literal template."""
    monkeypatch.setenv("SERVEKIT_TEST_API_KEY", "sk-from-env")
    view = ClusterView.load(_inventory(tmp_path, {
        "cluster_api_port": 9000, "cluster_data_address": "{{ ansible_host }}",
        "vllm_api_key": "{{ lookup('ansible.builtin.env', 'SERVEKIT_TEST_API_KEY') }}",
        "extra_ports": "{{ [cluster_api_port, 1] | ansible.builtin.to_json }}",
        "cluster_default_model": "{{ vault_model }}", "vault_model": "lab-tiny"}), ROOT, env=ENV)
    assert view.api_url == "https://10.0.0.1:9000" and view.api_key == "sk-from-env"
    assert view.var("extra_ports") == "[9000, 1]" and view.default_model == "lab-tiny"
    monkeypatch.setenv("MODEL_NAME", "from-env")
    assert ClusterView.load(_inventory(tmp_path), ROOT, env=ENV).var("cluster_model") == "from-env"


def test_one_head_or_an_error_naming_the_group(tmp_path):
    message = r"group 'head' must hold exactly one host, has \['node-a', 'node-c'\]"
    with pytest.raises(InventoryError, match=message):
        ClusterView.load(_inventory(tmp_path, heads=("node-a", "node-c")), ROOT, env=ENV)


def test_load_reads_a_real_inventory_as_ansible_inventory_lists_it():
    inventory = ROOT / "inventory" / "example-2node-roce" / "hosts.yml"
    view = ClusterView.load(inventory, ROOT, env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    listed = ansible("ansible-inventory", "-i", inventory, "--list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert view.nodes == ("spark-01", "spark-02")
    assert view.api_url == f"https://{view.address()}:{ROLE['cluster']['cluster_api_port']}"
    assert view.address() in listed.stdout


def test_load_names_a_missing_inventory(tmp_path):
    with pytest.raises(InventoryError, match="does not exist"):
        ClusterView.load(tmp_path / "nope", ROOT)


def _verify_conftest():
    """tests/verify/conftest.py as a module (it runs only against a live cluster)."""
    spec = importlib.util.spec_from_file_location("verify_conftest", ROOT / "tests/verify/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_suite_reads_nodes_ports_and_key_from_the_cluster_view(tmp_path):
    conftest = _verify_conftest()
    view = ClusterView.load(_inventory(
        tmp_path, {"vllm_api_key": "{{ vault_vllm_api_key }}", "vault_vllm_api_key": "sk-1"},
        {"cluster_data_address": "192.168.1.2"}), ROOT, env=ENV)
    nodes = conftest.cluster_nodes(view)
    assert [(n["name"], n["rank"], n["address"]) for n in nodes.values()] == [
        ("node-a", 0, "10.0.0.1"), ("node-b", 1, "192.168.1.2")]
    head = nodes["node-a"]
    assert head["api_port"] == ROLE["cluster"]["cluster_api_port"]
    assert head["vars"]["ray_dashboard_port"] == ROLE["ray"]["ray_dashboard_port"]
    assert head["vars"]["vllm_api_key"] == "sk-1"
    cluster_defaults = yaml.safe_load((ROOT / "roles/cluster/defaults/main.yml").read_text())
    assert head["vars"]["cluster_venv"] == f"{cluster_defaults['cluster_root']}/venv"
    assert conftest.ROLE_DEFAULTS == DEFAULTS


def test_every_variable_the_verify_suite_reads_is_a_role_default():
    """tests/verify reads variables without fallbacks: a renamed role variable must fail here,
    not as a KeyError on a live cluster."""
    text = "\n".join(p.read_text() for p in (ROOT / "tests/verify").glob("*.py"))
    read = set(re.findall(r'\["vars"\]\["(\w+)"\]|hostvars\["(\w+)"\]', text))
    names = {a or b for a, b in read}
    assert {"cluster_executor", "ray_dashboard_port", "cluster_venv"} <= names
    assert sorted(names - set(DEFAULTS)) == []


@pytest.mark.parametrize(
    ("head_vars", "scheme", "ca"),
    [
        ({"cluster_api_tls": False}, "http", None),
        ({"cluster_api_proxy": "false"}, "http", None),  # TLS is the proxy's
        ({"cluster_api_tls_cert": "-----BEGIN CERTIFICATE-----"}, "https", None),  # the system store
        ({"cluster_api_tls_ca_file": "/etc/ssl/my-ca.pem"}, "https", "/etc/ssl/my-ca.pem"),
    ],
    ids=["tls-off", "proxy-off", "own-cert", "own-ca"],
)
def test_api_scheme_and_the_ca_clients_trust(head_vars, scheme, ca):
    view = _pure(head_vars)
    assert view.api_url.startswith(f"{scheme}://10.0.0.1:")
    assert view.api_ca_file(ROOT / ".cache") == (ca and Path(ca))


def test_deployments_decide_the_served_name_and_the_placement():
    plain = _pure()
    assert plain.deployments == [] and plain.served_model == ROLE["cluster"]["cluster_default_model"]
    one = {"cluster_deployments": [{"name": "lab-tiny", "model": "lab-tiny"}], "cluster_devices_per_node": 1}
    view = _pure(one, one)
    assert view.served_model == "lab-tiny"
    assert view.registry_path(ROOT) == ROOT / "config" / "model_registry.yml"
    assert [r.as_dict()["devices"] for r in view.placement(ROOT)] == [{"node-a": [0], "node-b": [0]}]


def test_cluster_view_takes_the_relative_string_the_ci_scripts_pass(monkeypatch):
    """.ci/serving and .ci/edge-check pass -i as a string relative to the checkout (the CI run
    that found this: AttributeError: 'str' object has no attribute 'exists')."""
    monkeypatch.chdir(ROOT)
    view = cluster_view("inventory/example-2node-roce/hosts.yml")
    assert view.head == "spark-01" and view.inventory == ROOT / "inventory/example-2node-roce/hosts.yml"
