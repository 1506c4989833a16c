"""Role input rules: one loader and checker for the validate stage and the tests.

Each role's ``meta/argument_specs.yml`` gives types, choices, elements and
``required``; ``meta/input_rules.yml`` beside it adds what argument specs
cannot say: numeric ranges, formats and relations between inputs. The
validate stage (``action_plugins/validate_inputs.py``) runs
:func:`check_values` for every node on the control node, before any host is
touched; the unit tests call the same functions.

Every message names the variable, the value (``<hidden>`` for secrets) and
the allowed range, form or choices, with the closest known name for a typo.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HIDDEN = "<hidden>"
# Options whose names say they carry a secret are hidden even where the
# argument spec forgets ``no_log: true``.
SECRET_NAME = re.compile(r"(^|_)(password|passwd|secret|token|api_key|private_key)($|_)")
# Ansible's boolean spellings (ansible.module_utils.parsing.convert_bool).
TRUE_WORDS = frozenset({"y", "yes", "on", "1", "true", "t", "1.0"})
FALSE_WORDS = frozenset({"n", "no", "off", "0", "false", "f", "0.0"})


class RulesError(ValueError):
    """A rules file itself is malformed (a developer error, not bad input)."""


# --------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------

# Linux interface names: dev_valid_name() in net/core/dev.c rejects "", ".",
# "..", names of IFNAMSIZ (16, include/uapi/linux/if.h) or more bytes with
# the NUL, and any '/', ':' or whitespace.
_IFACE = re.compile(r"^[^/:\s]{1,15}$")
# RDMA device names (/sys/class/infiniband: mlx5_0, roceP2p1s0f0, rxe0);
# IB_DEVICE_NAME_MAX is 64 with the NUL (include/rdma/ib_verbs.h), and
# NCCL_IB_HCA takes an optional ":port".
_HCA_NAME = r"[A-Za-z0-9_.-]{1,63}(:[0-9]{1,3})?"
_HCA = re.compile(rf"^{_HCA_NAME}$")
# NCCL_IB_HCA: optional '^' (exclude) and/or '=' (exact names), then a
# comma-separated list (NCCL env docs, NCCL_IB_HCA).
_HCA_LIST = re.compile(rf"^\^?=?{_HCA_NAME}(,{_HCA_NAME})*$")
_MEMLOCK = re.compile(r"^([0-9]+[KMGTkmgt]?|unlimited|infinity)$")
# systemd.time(7) time spans: one or more "<number><unit>" parts.
_SPAN_UNITS = (r"usec|us|µs|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|"
               r"days|day|d|weeks|week|w|months|month|M|years|year|y")
_DURATION = re.compile(rf"^([0-9]+(\.[0-9]+)?\s*({_SPAN_UNITS})\s*)+$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= 65535


def _ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _cidr(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _host(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if _ip(value):
        return True
    name = value.rstrip(".")
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))


def _iface(value: Any) -> bool:
    return isinstance(value, str) and bool(_IFACE.match(value)) and value not in (".", "..")


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str | int) and not isinstance(value, bool) \
        and bool(pattern.match(str(value)))


def _abs_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/") and "\0" not in value


def _url(value: Any) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    return bool(parts.scheme) and bool(parts.netloc or parts.scheme == "file")


# name -> (checker, how the allowed form reads in a message)
FORMATS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "port": (_port, "a TCP/UDP port, an integer from 1 to 65535"),
    "cidr": (_cidr, "an IPv4 or IPv6 address or network in CIDR form (10.0.0.0/8, ::/0)"),
    "ip": (_ip, "an IPv4 or IPv6 address"),
    "host": (_host, "an IP address or a DNS name"),
    "iface": (_iface, "a Linux interface name: 1 to 15 characters, no '/', ':' or whitespace"),
    "hca": (_matches(_HCA), "an RDMA device name as in /sys/class/infiniband (mlx5_0), optional :port"),
    "hca_list": (_matches(_HCA_LIST),
                 "NCCL_IB_HCA syntax: optional '^' or '=', then comma-separated device[:port] "
                 "(mlx5_0,mlx5_1:1)"),
    "memlock": (_matches(_MEMLOCK), "'unlimited', 'infinity' or an integer with an optional K/M/G/T suffix"),
    "duration": (lambda v: (_is_int(v) and v >= 0) or _matches(_DURATION)(v),
                 "a systemd time span (30s, 5min, 2h) or an integer of seconds"),
    "abs_path": (_abs_path, "an absolute path (starting with '/')"),
    "url": (_url, "a URL with a scheme and a host (https://host/path)"),
}


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------


@dataclass
class RuleSet:
    """Every role's options, rules and relations, as loaded from the roles directory."""

    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> spec (+ 'role')
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {min,max,format,...}
    relations: list[dict[str, Any]] = field(default_factory=list)
    prefixes: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)  # old input name -> its new name

    def secret(self, name: str) -> bool:
        spec = self.options.get(name, {})
        return bool(spec.get("no_log")) or bool(SECRET_NAME.search(name))


def _yaml_load(path: Path) -> Any:
    import yaml  # PyYAML: controller side only

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_rules(roles_dir: str | Path) -> RuleSet:
    """Load every role's argument_specs and input_rules under ``roles_dir``."""
    roles = Path(roles_dir)
    ruleset = RuleSet()
    prefixes = {"cluster_"}
    for role in sorted(p for p in roles.iterdir() if p.is_dir()):
        prefixes.add(role.name + "_")
        specs_file = role / "meta" / "argument_specs.yml"
        if specs_file.is_file():
            specs = (_yaml_load(specs_file) or {}).get("argument_specs") or {}
            for entry in specs.values():
                for name, spec in ((entry or {}).get("options") or {}).items():
                    ruleset.options[name] = dict(spec or {}, role=role.name)
        rules_file = role / "meta" / "input_rules.yml"
        if rules_file.is_file():
            data = _yaml_load(rules_file) or {}
            for name, rule in (data.get("rules") or {}).items():
                _check_rule(rules_file, name, rule)
                ruleset.rules[name] = dict(rule, role=role.name)
            for relation in data.get("relations") or []:
                _check_relation(rules_file, relation)
                ruleset.relations.append(dict(relation, role=role.name))
            for old, new in (data.get("renamed") or {}).items():
                if not isinstance(new, str):
                    raise RulesError(f"{rules_file}: renamed: {old} must map to the new name")
                ruleset.renamed[old] = new
    ruleset.prefixes = tuple(sorted(prefixes))
    return ruleset


def _check_rule(path: Path, name: str, rule: Any) -> None:
    if not isinstance(rule, Mapping) or not rule:
        raise RulesError(f"{path}: rule for {name} must be a mapping of min/max/format/pattern")
    unknown = set(rule) - {"min", "max", "format", "pattern", "form", "records"}
    if unknown:
        raise RulesError(f"{path}: rule for {name} has unknown keys {sorted(unknown)}")
    if "records" in rule:
        _check_records_rule(path, name, rule["records"])
    if "format" in rule and rule["format"] not in FORMATS:
        raise RulesError(f"{path}: {name}: unknown format {rule['format']!r}; known: {', '.join(FORMATS)}")
    if "pattern" in rule:
        if "form" not in rule:
            raise RulesError(f"{path}: {name}: a pattern needs 'form', its description for people")
        re.compile(rule["pattern"])


def _check_records_rule(path: Path, name: str, records: Any) -> None:
    kinds = records.get("kinds") if isinstance(records, Mapping) else None
    if not isinstance(records, Mapping) or not isinstance(records.get("key"), str) \
            or not isinstance(kinds, Mapping) or not kinds \
            or not all(isinstance(k, Mapping) and isinstance(k.get("needs", []), list)
                       and isinstance(k.get("may", []), list) for k in kinds.values()):
        raise RulesError(f"{path}: {name}: 'records' needs 'key' (the field naming the kind) and 'kinds' "
                         "({kind: {needs: [fields], may: [fields]}})")
    for field_name, fmt in (records.get("formats") or {}).items():
        if fmt not in FORMATS:
            raise RulesError(f"{path}: {name}: field {field_name}: unknown format {fmt!r}")


def _check_relation(path: Path, relation: Any) -> None:
    if not isinstance(relation, Mapping) or relation.get("check") not in RELATIONS:
        raise RulesError(f"{path}: relation {relation!r}: 'check' must be one of {', '.join(RELATIONS)}")
    names = relation.get("vars")
    if not isinstance(names, list) or len(names) < (1 if relation["check"] in ONE_VAR_CHECKS else 2):
        raise RulesError(f"{path}: relation {relation!r} needs 'vars', a list of variable names")
    if relation["check"] == "span_at_least" and not _is_int(relation.get("count")):
        raise RulesError(f"{path}: relation {relation!r} needs an integer 'count'")
    if relation["check"] == "set_beyond_loopback" and len(names) != 2:
        raise RulesError(f"{path}: relation {relation!r} needs 'vars': [the key, the listen address]")
    if relation["check"] == "outside_range" and len(relation.get("range") or []) != 2:
        raise RulesError(f"{path}: relation {relation!r} needs 'range', [first, last] variable names")


def relation_vars(relation: Mapping[str, Any]) -> list[str]:
    """Every variable a relation reads (its vars, range and condition)."""
    names = list(relation.get("vars") or []) + list(relation.get("range") or [])
    when = relation.get("when")
    if isinstance(when, str):
        names.append(when)
    elif isinstance(when, Mapping):
        names.extend(when)
    if relation.get("unless"):
        names.append(relation["unless"])
    return names


# --------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest known name for a likely typo, or None."""
    found = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def show(ruleset: RuleSet, name: str, value: Any) -> str:
    """How a value reads in a message: repr for scalars, hidden for secrets."""
    if ruleset.secret(name):
        return HIDDEN
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _to_int(value: Any) -> tuple[bool, Any]:
    if _is_int(value):
        return True, value
    if isinstance(value, float) and value.is_integer():
        return True, int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
        return True, int(value)
    return False, value


def _to_float(value: Any) -> tuple[bool, Any]:
    if isinstance(value, bool):
        return False, value
    if isinstance(value, int | float):
        return True, float(value)
    try:
        return True, float(value)
    except (TypeError, ValueError):
        return False, value


def _to_bool(value: Any) -> tuple[bool, Any]:
    if isinstance(value, bool):
        return True, value
    word = str(value).strip().lower() if isinstance(value, str | int | float) else None
    if word in TRUE_WORDS:
        return True, True
    if word in FALSE_WORDS:
        return True, False
    return False, value


def _to_list(value: Any) -> tuple[bool, Any]:
    if isinstance(value, list | tuple):
        return True, list(value)
    if isinstance(value, str):  # Ansible splits a comma-separated string
        return True, [part.strip() for part in value.split(",")]
    if _is_int(value) or isinstance(value, float):
        return True, [str(value)]
    return False, value


def _to_str(value: Any) -> tuple[bool, Any]:
    if isinstance(value, str):
        return True, value
    if isinstance(value, bool | int | float):  # Ansible converts scalars to str
        return True, str(value)
    return False, value


CONVERTERS: dict[str, tuple[Callable[[Any], tuple[bool, Any]], str]] = {
    "int": (_to_int, "an integer"),
    "float": (_to_float, "a number"),
    "bool": (_to_bool, "a boolean (true/false)"),
    "list": (_to_list, "a list"),
    "dict": (lambda v: (isinstance(v, Mapping), v), "a mapping"),
    "str": (_to_str, "a string"),
    "path": (_to_str, "a path string"),
}


def _convert(kind: str | None, value: Any) -> tuple[bool, Any, str]:
    if not kind or kind not in CONVERTERS:
        return True, value, ""
    converter, form = CONVERTERS[kind]
    ok, converted = converter(value)
    return ok, converted, form


def _rule_problem(rule: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with one (element) value under one rule, or None."""
    if "format" in rule:
        check, form = FORMATS[rule["format"]]
        if not check(value):
            return f"must be {form}"
    if "pattern" in rule and not (isinstance(value, str | int) and not isinstance(value, bool)
                                  and re.fullmatch(rule["pattern"], str(value))):
        return f"must be {rule['form']}"
    if "min" in rule or "max" in rule:
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        low, high = rule.get("min"), rule.get("max")
        if number is None or (low is not None and number < low) or (high is not None and number > high):
            return f"must be {describe_range(low, high)}"
    return None


def _record_problems(name: str, items: list, records: Mapping[str, Any]) -> list[str]:
    """Problems of a list of records, {key: kind, ...}, each with the fields its kind needs.

    Field values are never shown (they may be vault secrets); names of fields and kinds are.
    """
    problems: list[str] = []
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            fields = ", ".join([*(records.get("fields") or []), records["key"]])
            problems.append(f"{where}: must be a mapping with {fields}")
            continue
        label = f"{where} ({item['name']})" if isinstance(item.get("name"), str) else where
        problems += _one_record_problems(label, item, records)
        if item.get("name") in (records.get("reserved_names") or []):
            problems.append(f"{label}: name {item['name']!r} is taken by servekit; choose another")
        if isinstance(item.get("name"), str):
            if item["name"] in seen:
                problems.append(f"{label}: name {item['name']!r} is also {name}[{seen[item['name']]}]'s; "
                                "names must be unique")
            seen.setdefault(item["name"], index)
    return problems


def _one_record_problems(label: str, item: Mapping[str, Any], records: Mapping[str, Any]) -> list[str]:
    key, kinds = records["key"], records["kinds"]
    common = [*(records.get("fields") or []), key]
    problems = [f"{label}: field '{needed}' is missing; every entry needs {', '.join(common)} "
                f"({key}: one of {', '.join(kinds)})" for needed in common if item.get(needed) in (None, "")]
    kind = item.get(key)
    if kind in (None, ""):
        return problems
    if kind not in kinds:
        hint = closest(str(kind), list(kinds))
        return [*problems, f"{label}: {key} = {kind!r}: must be one of {', '.join(kinds)}"
                + (f" (did you mean {hint}?)" if hint else "")]
    needs, may = list(kinds[kind].get("needs") or []), list(kinds[kind].get("may") or [])
    takes = [*common, *needs, *may]
    problems += [f"{label}: field '{needed}' is missing; {key} {kind} needs {', '.join(needs)}"
                 + (f" (and may have {', '.join(may)})" if may else "")
                 for needed in needs if item.get(needed) in (None, "")]
    for extra in sorted(set(item) - set(takes)):
        hint = closest(str(extra), takes)
        problems.append(f"{label}: unknown field '{extra}'" + (f" (did you mean {hint}?)" if hint else "")
                        + f"; {key} {kind} takes {', '.join(takes)}")
    for field_name, fmt in (records.get("formats") or {}).items():
        value = item.get(field_name)
        if field_name in takes and value not in (None, "") and not FORMATS[fmt][0](value):
            problems.append(f"{label}: {field_name} = {HIDDEN}: must be {FORMATS[fmt][1]}")
    return problems


def describe_range(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"at least {low}"
    return f"at most {high}"


def describe_rule(rule: Mapping[str, Any]) -> str:
    """The allowed form of a rule, as a message reads it."""
    parts = []
    if "format" in rule:
        parts.append(FORMATS[rule["format"]][1])
    if "pattern" in rule:
        parts.append(rule["form"])
    if "min" in rule or "max" in rule:
        parts.append(describe_range(rule.get("min"), rule.get("max")))
    return "; ".join(parts)


def _convert_items(ruleset: RuleSet, name: str, items: list, elements: str | None) -> tuple[list[str], list]:
    problems, converted = [], []
    for index, raw in enumerate(items):
        ok, item, form = _convert(elements, raw)
        if not ok:
            problems.append(f"{name}[{index}] = {show(ruleset, name, raw)}: must be {form}")
        converted.append(item)
    return problems, converted


def _choice_problems(ruleset: RuleSet, name: str, items: list, choices: list) -> list[str]:
    problems = []
    for item in items:
        if item not in choices:
            hint = closest(str(item), [str(c) for c in choices])
            suggestion = f" (did you mean {hint}?)" if hint else ""
            problems.append(f"{name} = {show(ruleset, name, item)}: must be one of "
                            f"{', '.join(str(c) for c in choices)}{suggestion}")
    return problems


def check_value(ruleset: RuleSet, name: str, value: Any) -> tuple[list[str], Any]:
    """Problems of one variable's value (type, choices, rule), and the converted value."""
    spec = ruleset.options.get(name, {})
    if value is None:
        if spec.get("required"):
            return [f"{name} = None: is required; set it or remove the null from the inventory"], None
        # Ansible's own argument check refuses a null that is not one of the choices.
        if spec.get("choices") and None not in spec["choices"]:
            return _choice_problems(ruleset, name, [None], spec["choices"]), None
        return [], None
    ok, value, form = _convert(spec.get("type"), value)
    if not ok:
        return [f"{name} = {show(ruleset, name, value)}: must be {form} "
                f"(argument_specs type {spec.get('type')})"], None
    is_list = spec.get("type") == "list"
    items = value if is_list else [value]
    if is_list:
        problems, items = _convert_items(ruleset, name, items, spec.get("elements"))
        if problems:
            return problems, None
        value = items
    problems = _choice_problems(ruleset, name, items, spec["choices"]) if spec.get("choices") else []
    rule = ruleset.rules.get(name)
    if rule and "records" in rule:
        problems += _record_problems(name, items, rule["records"])
        rule = {k: v for k, v in rule.items() if k != "records"} or None
    for index, item in enumerate(items if rule else []):
        problem = _rule_problem(rule, item)
        if problem:
            where = f"{name}[{index}]" if is_list else name
            problems.append(f"{where} = {show(ruleset, name, item)}: {problem}")
    return problems, (None if problems else value)


def _truthy(value: Any) -> bool:
    ok, flag = _to_bool(value)
    return flag if ok else bool(value)


def _relation_applies(relation: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    unless = relation.get("unless")
    if unless and _truthy(values.get(unless)):
        return False
    when = relation.get("when")
    if when is None:
        return True
    if isinstance(when, str):
        return when in values and _truthy(values[when])
    return all(name in values and values[name] == wanted for name, wanted in when.items())


def _ordered(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    strict = relation["check"] == "less_than"
    word = "less than" if strict else "at most"
    return [f"{pair(a)} must be {word} {pair(b)}" for a, b in itertools.pairwise(relation["vars"])
            if not (values[a] < values[b] if strict else values[a] <= values[b])]


def _sum_less_than(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    *parts, bound = relation["vars"]
    total = sum(values[n] for n in parts)
    if total < values[bound]:
        return []
    return [f"{' + '.join(pair(n) for n in parts)} = {total} must be less than {pair(bound)}"]


def _distinct(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    names = relation["vars"]
    seen: dict[Any, str] = {}
    problems = []
    for n in names:
        if values[n] in seen:
            problems.append(f"{pair(n)} must differ from {seen[values[n]]} "
                            f"(these must all differ: {', '.join(names)})")
        else:
            seen[values[n]] = n
    return problems


def _differs_from(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    first, *others = relation["vars"]
    return [f"{pair(first)} must differ from {pair(n)}" for n in others if values[n] == values[first]]


def _span_at_least(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    first, last = relation["vars"][:2]
    span = values[last] - values[first] + 1
    if 0 < span < relation["count"]:  # an empty or reversed range is less_than's to name
        return [f"{pair(first)} to {pair(last)} holds {span} value(s); "
                f"it must hold at least {relation['count']}"]
    return []


def _outside_range(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    first, last = relation["range"]
    return [f"{pair(n)} lies inside {first}..{last} ({values[first]}..{values[last]}); "
            f"it must be outside that range"
            for n in relation["vars"] if values[first] <= values[n] <= values[last]]


def _is_loopback(address: Any) -> bool:
    try:
        return ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        return str(address) == "localhost"


def _set_beyond_loopback(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    key, address = relation["vars"]
    if values.get(key) or _is_loopback(values[address]):
        return []
    opt_out = f"; or set {relation['unless']}: true to serve it without one on purpose" \
        if relation.get("unless") else ""
    return [f"{key} is not set while {pair(address)} listens beyond loopback: anyone the firewall "
            f"lets in could use the API. Set {key} (from ansible-vault){opt_out}"]


def _required(relation: Mapping, values: Mapping, pair: Callable[[str], str]) -> list[str]:
    name = relation["vars"][0]
    if _truthy(values.get(name)) and values.get(name) != "":
        return []
    shown = f"{name} is not set" if values.get(name) in (None, "") else pair(name)
    cause = relation.get("when")
    because = f" when {cause} is true or set" if isinstance(cause, str) else ""
    return [f"{shown}: it must be true or set{because}"]


RELATIONS: dict[str, Callable[[Mapping, Mapping, Callable[[str], str]], list[str]]] = {
    "less_than": _ordered,
    "less_equal": _ordered,
    "sum_less_than": _sum_less_than,
    "distinct": _distinct,
    "differs_from": _differs_from,
    "span_at_least": _span_at_least,
    "outside_range": _outside_range,
    "set_beyond_loopback": _set_beyond_loopback,
    "required": _required,
}
# Checks that read one variable (plus their condition)
ONE_VAR_CHECKS = frozenset({"outside_range", "required"})
# Checks whose first variable may be null (that is what they look for).
NULLABLE_FIRST = frozenset({"set_beyond_loopback", "required"})


def check_relation(ruleset: RuleSet, relation: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Problems of one relation over already-checked values; skipped where a value is unknown."""
    if not _relation_applies(relation, values):
        return []
    names = list(relation["vars"]) + list(relation.get("range") or [])
    if relation["check"] in NULLABLE_FIRST:
        names = names[1:]
    if any(values.get(n) is None for n in names):
        return []

    def pair(n: str) -> str:
        return f"{n} = {show(ruleset, n, values[n])}"

    return RELATIONS[relation["check"]](relation, values, pair)


def check_values(ruleset: RuleSet, values: Mapping[str, Any]) -> list[str]:
    """Every problem of one host's effective values (role defaults overlaid by inventory).

    Variables missing from ``values`` (not resolvable on the control node)
    are skipped, and so are relations that read them.
    """
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for name in sorted(values):
        if name not in ruleset.options and name not in ruleset.rules:
            continue
        found, value = check_value(ruleset, name, values[name])
        problems.extend(found)
        checked[name] = value
    for name, value in values.items():  # relation conditions may read any variable
        checked.setdefault(name, value)
    for relation in ruleset.relations:
        if all(n in checked for n in relation["vars"] + list(relation.get("range") or [])):
            problems.extend(check_relation(ruleset, relation, checked))
    return problems


def renamed_variables(ruleset: RuleSet, names: Iterable[str]) -> list[str]:
    """Inputs the inventory sets under a name they no longer have, each with its new name."""
    return [f"{name} was renamed to {ruleset.renamed[name]}: set {ruleset.renamed[name]} instead"
            for name in sorted(set(names)) if name in ruleset.renamed]


def unknown_variables(ruleset: RuleSet, names: Iterable[str]) -> list[str]:
    """Names with a role prefix that no argument spec defines, with the closest real name."""
    known = set(ruleset.options)
    found = []
    for name in sorted(set(names)):
        prefix = next((p for p in ruleset.prefixes if name.startswith(p)), None)
        if prefix is None or name in known or name in ruleset.renamed:
            continue
        hint = closest(name, known)
        found.append(f"{name} looks like an input of role '{prefix[:-1]}' but no role takes it"
                     + (f"; did you mean {hint}?" if hint else ""))
    return found
