"""Role input rules: every rule refuses a bad value, in the checker and through the validate play."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook
from servekit.module_utils import input_rules
from servekit.module_utils.input_rules import FORMATS, check_values, load_rules, relation_vars

RULES = load_rules(ROOT / "roles")
SERVEKIT = str(Path(sys.executable).with_name("servekit"))
EXAMPLE = ROOT / "inventory" / "example-2node-roce"

# A value each format refuses.
BAD_FORMAT = {
    "port": 70000,
    "cidr": "10.0.0.0/33",
    "ip": "10.0.0.256",
    "host": "bad host!",
    "iface": "a-name-of-16-chr",
    "hca": "mlx5 0",
    "hca_list": "mlx5_0,,mlx5_1",
    "memlock": "lots",
    "duration": "5 parsecs",
    "abs_path": "relative/path",
    "url": "not a url",
}


def _bad_value(rule: dict):
    """A value that breaks the rule (its format first, else its pattern, else its range)."""
    if "format" in rule:
        return BAD_FORMAT[rule["format"]]
    if "pattern" in rule:
        return " no match "
    if "min" in rule:
        return rule["min"] - 1
    return rule["max"] + 1


def _allowed(rule: dict) -> str:
    if "format" in rule:
        return FORMATS[rule["format"]][1]
    if "pattern" in rule:
        return rule["form"]
    return input_rules.describe_range(rule.get("min"), rule.get("max"))


# records (lists of typed mappings) have their own tests below
RULED = sorted(n for n, rule in RULES.rules.items() if "records" not in rule)
CHOICES = sorted(n for n, spec in RULES.options.items() if spec.get("choices"))


@pytest.mark.parametrize("name", RULED)
def test_every_rule_refuses_a_bad_value_and_says_what_is_allowed(name):
    rule = RULES.rules[name]
    spec = RULES.options[name]
    bad = _bad_value(rule)
    value = [bad] if spec.get("type") == "list" else bad
    problems = check_values(RULES, {name: value})
    assert problems, f"{name} = {value!r} passed its rule {rule}"
    shown = "<hidden>" if RULES.secret(name) else repr(bad)
    label = f"{name}[0]" if spec.get("type") == "list" else name
    assert any(p.startswith(f"{label} = {shown}:") and _allowed(rule) in p for p in problems), problems


@pytest.mark.parametrize("name", CHOICES)
def test_every_choice_option_refuses_an_unknown_value_and_lists_the_choices(name):
    choices = RULES.options[name]["choices"]
    bad = "not-a-choice" if not isinstance(choices[0], int) else max(choices) + 7
    problems = check_values(RULES, {name: bad})
    assert problems == [f"{name} = {bad!r}: must be one of {', '.join(str(c) for c in choices)}"]


def _defaults() -> dict:
    values: dict = {}
    for path in ROOT.glob("roles/*/defaults/main.yml"):
        values.update(yaml.safe_load(path.read_text()) or {})
    return values


def _relation_case(relation: dict) -> tuple[dict, str]:
    """Values (valid one by one) that break the relation, and the variable the message must name."""
    if relation["check"] == "set_beyond_loopback":  # no key, an outside address
        key, address = relation["vars"]
        return {key: None, address: "0.0.0.0", relation["unless"]: False}, address
    if relation["check"] == "required":
        name = relation["vars"][0]
        off = False if RULES.options.get(name, {}).get("type") == "bool" else None
        return {name: off, relation["when"]: True}, name
    defaults = _defaults()
    values = {}
    for name in relation_vars(relation):
        value = defaults.get(name)
        if not isinstance(value, int) or isinstance(value, bool):  # null or a template
            value = RULES.rules.get(name, {}).get("min", 1)
        values[name] = value
    when = relation.get("when")
    if isinstance(when, str):
        values[when] = True
    elif isinstance(when, dict):
        values.update(when)
    names, check = relation["vars"], relation["check"]
    if check in ("less_than", "less_equal"):
        values[names[0]] = values[names[1]] + 1
    elif check == "sum_less_than":
        values[names[-1]] = sum(values[n] for n in names[:-1])
    elif check in ("distinct", "differs_from"):
        values[names[1]] = values[names[0]]
    elif check == "span_at_least":
        values[names[1]] = values[names[0]] + relation["count"] - 2
    elif check == "outside_range":
        values[names[0]] = values[relation["range"][0]]
    return values, names[0] if check != "distinct" else names[1]


@pytest.mark.parametrize("relation", RULES.relations,
                         ids=[f"{r['role']}-{r['check']}-{r['vars'][0]}" for r in RULES.relations])
def test_every_relation_refuses_values_that_break_it(relation):
    values, named = _relation_case(relation)
    for name, value in values.items():  # each value alone passes its own rule
        assert not check_values(RULES, {name: value}), (name, value)
    problems = check_values(RULES, values)
    shown = f"{named} is not set" if values[named] is None else f"{named} = {values[named]!r}"
    assert any(shown in p for p in problems), problems
    if relation.get("when"):  # and the condition gates it
        off = dict(values, **({relation["when"]: False} if isinstance(relation["when"], str)
                              else {k: "other" for k in relation["when"]}))
        assert not any(f"{named} = {values[named]!r}" in p and relation["check"] in ("differs_from",)
                       for p in check_values(RULES, off))


def test_every_relation_of_defaults_holds():
    values = {n: v for n, v in _defaults().items() if not (isinstance(v, str) and "{{" in v)}
    # the defaults listen on 0.0.0.0: an inventory must bring an API key
    values["vllm_api_key"] = "sk-from-vault"
    assert check_values(RULES, values) == []


KEY_RULE = ("vllm_api_key is not set while vllm_api_host = '0.0.0.0' listens beyond loopback")


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ({}, True),
        ({"vllm_api_key": ""}, True),
        ({"vllm_api_host": "10.0.0.1"}, True),
        ({"vllm_api_host": "::"}, True),
        ({"vllm_api_key": "sk-1"}, False),
        ({"vllm_api_host": "127.0.0.1"}, False),
        ({"vllm_api_host": "::1"}, False),
        ({"vllm_api_allow_unauthenticated": True}, False),
        ({"vllm_api_allow_unauthenticated": "yes"}, False),
    ],
    ids=["defaults", "empty-key", "data-address", "v6-any", "key", "loopback", "v6-loopback", "opt-out",
         "opt-out-word"],
)
def test_an_api_beyond_loopback_needs_a_key_or_the_named_opt_out(values, refused):
    effective = {n: v for n, v in _defaults().items() if not (isinstance(v, str) and "{{" in v)}
    effective.update(values)
    problems = [p for p in check_values(RULES, effective) if p.startswith("vllm_api_key is not set")]
    assert bool(problems) == refused, problems
    if refused:
        assert "set vllm_api_allow_unauthenticated: true" in problems[0]
        assert f"vllm_api_host = {effective['vllm_api_host']!r}" in problems[0]


def test_tls_needs_the_proxy_and_a_certificate_needs_its_key():
    base = {n: v for n, v in _defaults().items() if not (isinstance(v, str) and "{{" in v)}
    base["vllm_api_key"] = "sk-1"
    assert check_values(RULES, dict(base, cluster_api_proxy=False)) == [
        "cluster_api_proxy = False: it must be true or set when cluster_api_tls is true or set"]
    assert check_values(RULES, dict(base, cluster_api_proxy=False, cluster_api_tls=False)) == []
    only_cert = check_values(RULES, dict(base, cluster_api_tls_cert="-----BEGIN CERTIFICATE-----"))
    assert only_cert == ["cluster_api_tls_key is not set: it must be true or set when "
                         "cluster_api_tls_cert is true or set"]
    only_key = check_values(RULES, dict(base, cluster_api_tls_key="-----BEGIN PRIVATE KEY----- s3cr3t"))
    assert only_key and "s3cr3t" not in " ".join(only_key)


# Options that need a rule: numbers, paths, and names that say port, address,
# interface, HCA, timeout, interval, count, MTU, priority, ToS/TC/SL.
NEEDS_RULE = re.compile(
    r"(port|cidr|address|addr|host$|iface|interface|netdev|hca|timeout|interval|count|cnt|retr|mtu|"
    r"priority|_tos$|_tc$|_sl$|dscp|memlock|_dir$|_file$|_path$|_url$)")


def test_every_option_that_needs_a_rule_has_one():
    missing = []
    for name, spec in sorted(RULES.options.items()):
        if name in RULES.rules or spec.get("choices") or spec.get("type") in ("bool", "dict", "raw"):
            continue
        kind = spec.get("type")
        if kind in ("int", "float", "path") or spec.get("elements") == "int" or NEEDS_RULE.search(name):
            missing.append(f"{spec['role']}: {name} ({kind})")
    assert not missing, ("add a range or format to roles/<role>/meta/input_rules.yml for: "
                         + ", ".join(missing))


def test_every_rule_and_relation_names_a_real_option():
    unknown = [n for n in RULES.rules if n not in RULES.options]
    for relation in RULES.relations:
        unknown += [n for n in relation_vars(relation) if n not in RULES.options]
    assert not unknown, f"rules name variables no argument_specs defines: {unknown}"


def test_every_role_with_inputs_has_a_rules_file():
    specs = [p for p in ROOT.glob("roles/*/meta/argument_specs.yml")
             if (yaml.safe_load(p.read_text())["argument_specs"]["main"].get("options"))]
    missing = [p.parent.parent.name for p in specs if not (p.parent / "input_rules.yml").is_file()]
    assert specs and not missing, f"add meta/input_rules.yml to {missing}"


@pytest.mark.parametrize(
    ("fmt", "good"),
    [("port", 22), ("cidr", "::/0"), ("cidr", "192.168.100.7"), ("ip", "fe80::1"), ("host", "node-1.lab"),
     ("iface", "enP2p1s0f0np0"), ("hca", "mlx5_0:1"), ("hca_list", "^=mlx5_0,mlx5_1:1"),
     ("memlock", "unlimited"), ("memlock", "64M"), ("duration", "1min 30s"), ("duration", 90),
     ("abs_path", "/etc/servekit"), ("url", "https://pypi.example/simple")],
)
def test_formats_accept_the_documented_forms(fmt, good):
    check, _form = FORMATS[fmt]
    assert check(good)
    assert not check(BAD_FORMAT[fmt])


def test_types_follow_ansible_conversions():
    assert check_values(RULES, {"network_mtu": "9000", "firewall_ssh_cidrs": "10.0.0.0/8,::/0"}) == []
    assert check_values(RULES, {"network_mtu": "jumbo"}) == [
        "network_mtu = 'jumbo': must be an integer (argument_specs type int)"]
    assert check_values(RULES, {"cluster_rdma_enabled": "maybe"}) == [
        "cluster_rdma_enabled = 'maybe': must be a boolean (true/false) (argument_specs type bool)"]
    assert check_values(RULES, {"cluster_env_file": None}) == [
        "cluster_env_file = None: is required; set it or remove the null from the inventory"]
    assert check_values(RULES, {"preflight_mtu": None}) == []
    # Ansible's own argument check refuses a null that is not a choice, required or not.
    optional = input_rules.RuleSet(options={"demo_mode": {"type": "str", "choices": ["fast", "safe"]}})
    assert check_values(optional, {"demo_mode": None}) == ["demo_mode = None: must be one of fast, safe"]


def test_choices_suggest_the_closest_one():
    assert check_values(RULES, {"cluster_executor": "rey"}) == [
        "cluster_executor = 'rey': must be one of ray, mp (did you mean ray?)"]


def test_secrets_are_never_shown():
    assert RULES.options["vllm_api_key"].get("no_log") and RULES.options["vllm_hf_token"].get("no_log")
    problems = check_values(RULES, {"vllm_api_key": ["s3cr3t"], "vllm_hf_token": {"t": "hf_s3cr3t"}})
    assert problems == ["vllm_api_key = <hidden>: must be a string (argument_specs type str)",
                        "vllm_hf_token = <hidden>: must be a string (argument_specs type str)"]


def test_unknown_role_prefixed_names_get_the_closest_real_name():
    found = input_rules.unknown_variables(RULES, ["network_mut", "netwrok_mtu", "network_mtu", "lab_x"])
    assert found == ["network_mut looks like an input of role 'network' but no role takes it; "
                     "did you mean network_mtu?"]


def test_a_renamed_input_names_its_new_name_and_is_not_an_unknown_one():
    names = ["vllm_api_tls", "ray_metrics_export_port", "cluster_api_tls"]
    assert input_rules.renamed_variables(RULES, names) == [
        "ray_metrics_export_port was renamed to cluster_ray_metrics_export_port: "
        "set cluster_ray_metrics_export_port instead",
        "vllm_api_tls was renamed to cluster_api_tls: set cluster_api_tls instead"]
    assert input_rules.unknown_variables(RULES, names) == []


def test_every_renamed_input_points_at_a_real_one():
    assert RULES.renamed, "roles/*/meta/input_rules.yml renamed: is gone"
    gone = {old: new for old, new in RULES.renamed.items()
            if new not in RULES.options or old in RULES.options}
    assert not gone, f"renamed: {gone}: the new name must be an input and the old one no longer"


def test_a_malformed_rules_file_is_refused(tmp_path):
    role = tmp_path / "demo" / "meta"
    role.mkdir(parents=True)
    (role / "input_rules.yml").write_text("rules:\n  demo_x: {format: portt}\n")
    with pytest.raises(input_rules.RulesError, match="unknown format 'portt'"):
        load_rules(tmp_path)


# --------------------------------------------------------------------------
# through the validate play and the CLI (localhost only: nothing connects)
# --------------------------------------------------------------------------


def _inventory(tmp_path: Path, extra: dict | None = None, worker_vars: dict | None = None) -> Path:
    """A copy of the example inventory on two local addresses no play connects to."""
    inv = tmp_path / "inv"
    shutil.copytree(EXAMPLE / "group_vars", inv / "group_vars")
    hosts = {"all": {"children": {"cluster": {"children": {
        "head": {"hosts": {"fake-head": {"ansible_host": "127.0.0.11"}}},
        "workers": {"hosts": {"fake-worker": dict({"ansible_host": "127.0.0.12"}, **(worker_vars or {}))}},
    }}}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    if extra:
        (inv / "group_vars" / "all" / "test.yml").write_text(yaml.safe_dump(extra))
    return inv / "hosts.yml"


def _validate(inventory: Path) -> subprocess.CompletedProcess:
    return ansible_playbook("-i", inventory, "playbooks/validate.yml", env={"ANSIBLE_NOCOLOR": "1"})


# Every bad input below, each in a field of its own, in one inventory: the validate play reports
# them all in one run (the action plugin collects every problem before it fails), so one
# run shows that each is found, named and counted once.
BAD_INPUTS = pytest.mark.parametrize(
    ("extra", "worker_vars", "message"),
    [
        (None, {"network_mtu": 90000},
         "network_mtu = 90000: must be from 1280 to 9216 (set for fake-worker)"),
        ({"firewall_ssh_cidrs": ["10.0.0.0/33"]}, None,
         "firewall_ssh_cidrs[0] = '10.0.0.0/33': must be an IPv4 or IPv6 address or network in CIDR form"),
        ({"ray_min_worker_port": 21000}, None,
         "ray_min_worker_port = 21000 must be less than ray_max_worker_port = 20999 "
         "(set for fake-head, fake-worker)"),
        ({"rdma_nccl_ib_timeout": 0}, None, "rdma_nccl_ib_timeout = 0: must be from 1 to 31"),
        ({"vllm_backend_port": 8000}, None,
         "vllm_backend_port = 8000 must differ from cluster_api_port = 8000"),
        ({"cluster_rdma_netdev": "enP2p1s0f0np0-long"}, None,
         "cluster_rdma_netdev = 'enP2p1s0f0np0-long': must be a Linux interface name"),
        ({"vllm_api_key": None}, None,
         f"{KEY_RULE}: anyone the firewall lets in could use the API. Set vllm_api_key (from "
         "ansible-vault); or set vllm_api_allow_unauthenticated: true to serve it without one on purpose"),
        ({"runtime_container_engine": "podman"}, None,
         "runtime_container_engine was renamed to cluster_container_engine: set cluster_container_engine "
         "instead (set for fake-head, fake-worker)"),
    ],
    ids=["mtu-per-host", "cidr", "worker-range", "ib-timeout", "proxy-port", "iface", "no-api-key",
         "renamed"],
)
BAD_CASES = BAD_INPUTS.args[1]


@pytest.fixture(scope="module")
def all_bad(tmp_path_factory) -> subprocess.CompletedProcess:
    extra: dict = {}
    worker_vars: dict = {}
    for case_extra, case_worker_vars, _ in BAD_CASES:
        assert not set(case_extra or {}) & set(extra) and not set(case_worker_vars or {}) & set(worker_vars)
        extra.update(case_extra or {})
        worker_vars.update(case_worker_vars or {})
    return _validate(_inventory(tmp_path_factory.mktemp("all-bad"), extra, worker_vars))


@BAD_INPUTS
def test_validate_play_refuses_bad_inputs(all_bad, extra, worker_vars, message):
    proc = all_bad
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert message in proc.stdout, proc.stdout[-3000:]
    assert "Check the model registry" not in proc.stdout, "the input check must come first"


def test_every_bad_input_is_counted_once(all_bad):
    counted = f"inventory: {len(BAD_CASES)} bad role input(s), found before any host was touched"
    assert counted in all_bad.stdout, all_bad.stdout[-3000:]


def test_validate_play_takes_the_named_opt_out(tmp_path):
    proc = _validate(_inventory(tmp_path, {"vllm_api_key": None, "vllm_api_allow_unauthenticated": True}))
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_validate_play_hides_secrets(tmp_path):
    proc = _validate(_inventory(tmp_path, {"vllm_api_key": ["sk-s3cr3t-value"]}))
    assert proc.returncode == 2
    assert "vllm_api_key = <hidden>: must be a string" in proc.stdout
    assert "s3cr3t" not in proc.stdout + proc.stderr


def test_validate_play_names_a_bad_receiver_field_and_hides_its_secrets(tmp_path):
    receivers = [{"name": "ops", "type": "slack", "api_url": "https://chat.example.net/hooks/T0K3N",
                  "chanel": "#ops"}]
    proc = _validate(_inventory(tmp_path, {"monitoring_alert_receivers": receivers}))
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert ("monitoring_alert_receivers[0] (ops): unknown field 'chanel' (did you mean channel?)"
            in proc.stdout), proc.stdout[-3000:]
    assert "T0K3N" not in proc.stdout + proc.stderr


def test_validate_play_warns_on_a_typo_and_fails_when_strict(tmp_path):
    loose = _validate(_inventory(tmp_path, {"network_mut": 9000, "netwrok_mtu": 9000}))
    assert loose.returncode == 0, loose.stdout[-3000:]
    warning = ("network_mut looks like an input of role 'network' but no role takes it; "
               "did you mean network_mtu?")
    assert warning in loose.stdout + loose.stderr
    assert "netwrok_mtu" not in loose.stdout + loose.stderr
    strict = _validate(_inventory(tmp_path / "strict", {"network_mut": 9000, "cluster_strict_inputs": True}))
    assert strict.returncode == 2
    assert warning in strict.stdout


def test_servekit_up_exits_2_with_the_message_on_stderr(tmp_path):
    inventory = _inventory(tmp_path, {"ray_dashboard_host": "localhost"})
    proc = subprocess.run([SERVEKIT, "up", "-i", str(inventory), "--tags", "validate"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert proc.stderr.startswith("servekit: error: inventory: 1 bad role input(s)")
    assert "ray_dashboard_host = 'localhost': must be an IPv4 or IPv6 address" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _lab_inventory(tmp_path: Path) -> Path:
    """inventory/lab as `servekit lab up` leaves it (hosts.yml and lab.yml), in a temp copy."""
    inv = tmp_path / "lab"
    shutil.copytree(ROOT / "inventory" / "lab", inv)
    if not (inv / "hosts.yml").exists():
        hosts = {"all": {"children": {"cluster": {"children": {
            "head": {"hosts": {"lab-head": {"ansible_host": "10.77.0.2"}}},
            "workers": {"hosts": {"lab-worker": {"ansible_host": "10.77.0.3"}}}}}}}}
        (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
        (inv / "group_vars" / "all" / "lab.yml").write_text(yaml.safe_dump({
            "ansible_user": "root", "lab_wheelhouse": "/opt/servekit/wheelhouse",
            "lab_model_source": str(tmp_path / "model")}))
    (inv / "group_vars" / "all" / "vault.yml").unlink(missing_ok=True)
    # what `servekit lab up` writes encrypted into vault.yml (no vault password here)
    (inv / "group_vars" / "all" / "test-vault.yml").write_text("vault_vllm_api_key: sk-lab-test\n")
    return inv / "hosts.yml"


@pytest.mark.parametrize("inventory", ["example-2node-roce", "lab"])
def test_shipped_inventories_pass_the_input_checks(tmp_path, inventory, example_validate):
    # the example's run is shared with the other tests that validate it (tests/conftest.py)
    proc = (example_validate(inventory) if inventory == "example-2node-roce"
            else _validate(_lab_inventory(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "looks like an input" not in proc.stdout + proc.stderr


def test_a_ray_port_clash_is_reported_once():
    """One `distinct` relation owns the head's ports (the API's, vLLM's and Ray's): a clash is one line."""
    defaults = _defaults()
    ports = [name for relation in RULES.relations if relation["check"] == "distinct"
             for name in relation["vars"]]
    values = {name: defaults[name] for name in ports}
    values["ray_dashboard_port"] = values["ray_port"]
    problems = check_values(RULES, values)
    clash = [p for p in problems if "ray_dashboard_port = " in p]
    assert len(clash) == 1, problems
    assert f"ray_dashboard_port = {values['ray_port']} must differ from ray_port" in clash[0]


# --------------------------------------------------------------------------
# records: monitoring_alert_receivers
# --------------------------------------------------------------------------

HOOK = "https://hooks.example.net/T0K3N"


def _receivers(*entries: dict) -> list[str]:
    return check_values(RULES, {"monitoring_alert_receivers": list(entries)})


def test_receivers_of_every_type_pass():
    assert _receivers() == []
    assert _receivers({"name": "a", "type": "webhook", "url": HOOK},
                      {"name": "b", "type": "email", "to": "o@example.net", "from": "s@example.net",
                       "smarthost": "smtp.example.net:587", "auth_username": "u", "auth_password": "pw"},
                      {"name": "c", "type": "slack", "api_url": HOOK, "channel": "#ops"}) == []


def test_an_unknown_receiver_type_names_the_allowed_ones():
    assert _receivers({"name": "a", "type": "slak", "api_url": HOOK}) == [
        "monitoring_alert_receivers[0] (a): type = 'slak': must be one of webhook, email, slack "
        "(did you mean slack?)"]


def test_a_receiver_missing_a_field_names_it_and_what_its_type_needs():
    assert _receivers({"name": "m", "type": "email", "to": "o@example.net", "from": "s@example.net"}) == [
        "monitoring_alert_receivers[0] (m): field 'smarthost' is missing; type email needs to, from, "
        "smarthost (and may have auth_username, auth_password)"]
    assert _receivers({"type": "webhook", "url": HOOK}) == [
        "monitoring_alert_receivers[0]: field 'name' is missing; every entry needs name, type "
        "(type: one of webhook, email, slack)"]


def test_a_misspelt_receiver_field_gets_the_closest_name():
    problems = _receivers({"name": "c", "type": "slack", "api_url": HOOK, "chanel": "#ops"})
    assert problems == [
        "monitoring_alert_receivers[0] (c): field 'channel' is missing; type slack needs api_url, channel",
        "monitoring_alert_receivers[0] (c): unknown field 'chanel' (did you mean channel?); "
        "type slack takes name, type, api_url, channel"]


def test_receiver_urls_are_checked_and_never_shown():
    problems = _receivers({"name": "a", "type": "webhook", "url": "T0K3N-not-a-url"})
    assert problems == [f"monitoring_alert_receivers[0] (a): url = <hidden>: must be {FORMATS['url'][1]}"]
    assert not any("T0K3N" in p for p in _receivers({"name": "a", "type": "pager", "url": "T0K3N"}))


def test_receiver_names_are_unique_and_null_is_servekits():
    assert _receivers({"name": "a", "type": "webhook", "url": HOOK},
                      {"name": "a", "type": "webhook", "url": HOOK}) == [
        "monitoring_alert_receivers[1] (a): name 'a' is also monitoring_alert_receivers[0]'s; "
        "names must be unique"]
    assert _receivers({"name": "null", "type": "webhook", "url": HOOK}) == [
        "monitoring_alert_receivers[0] (null): name 'null' is taken by servekit; choose another"]


def test_a_receiver_that_is_not_a_mapping_is_refused_hidden():
    assert _receivers("T0K3N") == ["monitoring_alert_receivers[0] = <hidden>: must be a mapping"]


def test_a_malformed_records_rule_is_refused(tmp_path):
    (tmp_path / "demo" / "meta").mkdir(parents=True)
    (tmp_path / "demo" / "meta" / "input_rules.yml").write_text(
        "rules:\n  demo_list: {records: {key: type}}\n")
    with pytest.raises(input_rules.RulesError, match="'records' needs 'key'"):
        load_rules(tmp_path)


# --------------------------------------------------------------------------
# records: monitoring_remote_write
# --------------------------------------------------------------------------

def _remote_write(*entries: dict) -> list[str]:
    return check_values(RULES, {"monitoring_remote_write": list(entries)})


def test_remote_write_targets_of_every_auth_pass_and_a_bad_one_is_named_without_its_secret():
    write = "https://prom.example.net/api/v1/write"
    assert _remote_write({"name": "a", "url": write, "auth": "none"},
                         {"name": "b", "url": write, "auth": "basic", "username": "u", "password": "s3cret",
                          "ca_file": "/etc/ssl/ca.pem", "insecure_skip_verify": False},
                         {"name": "c", "url": write, "auth": "bearer", "token": "T0K3N"}) == []
    problems = _remote_write({"name": "b", "url": "prom.example.net", "auth": "basic", "user": "u",
                              "password": "s3cret"},
                             {"name": "c", "url": write, "auth": "token", "token": "T0K3N"},
                             {"name": "d", "url": write, "auth": "none", "ca_file": "ca.pem"})
    assert problems == [
        "monitoring_remote_write[0] (b): field 'username' is missing; auth basic needs username, password "
        "(and may have ca_file, insecure_skip_verify)",
        "monitoring_remote_write[0] (b): unknown field 'user' (did you mean username?); auth basic takes "
        "name, url, auth, username, password, ca_file, insecure_skip_verify",
        "monitoring_remote_write[0] (b): url = <hidden>: must be a URL with a scheme and a host "
        "(https://host/path)",
        "monitoring_remote_write[1] (c): auth = 'token': must be one of none, basic, bearer",
        "monitoring_remote_write[2] (d): ca_file = <hidden>: must be an absolute path (starting with '/')",
    ], problems
    assert not [p for p in problems if "s3cret" in p or "T0K3N" in p]
