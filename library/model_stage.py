#!/usr/bin/python
"""Ansible module: stage a model's files on a node before vLLM starts (rsync, or a hub download)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_stage
short_description: Put a model's files in place before vLLM starts, and count the bytes moved
version_added: "0.1.0"
description:
  - >-
    C(mode=rsync) makes O(dest) a copy of O(src) with rsync (C(-a --delete --partial-dir --stats)).
    A file is sent only when its size or time differ, every sent file is checked against a
    whole-file checksum, a broken transfer resumes. O(dest) may be on O(remote) (over SSH) and
    O(src) an rsync daemon (C(rsync://host:port/module/)). Changed when a file was written,
    created or deleted.
  - >-
    C(mode=hub) downloads a hub model repository with huggingface_hub's C(hf download) into the
    node's cache, HF_TOKEN in the environment (never on the command line). Changed when the
    repository's folder in the cache (O(cache)) grew.
  - >-
    Check mode runs C(rsync --dry-run) (reports what would move); for the hub it runs nothing (no
    network needed) and reports a change where the cache holds no snapshot of the repository yet.
  - Command lines and the C(--stats) parser live in C(module_utils/model_stage.py).
options:
  mode:
    description: How the files arrive.
    type: str
    choices: [rsync, hub]
    required: true
  src:
    description: rsync source directory, with a trailing C(/).
    type: str
  dest:
    description: >-
      rsync destination directory, with a trailing C(/); on O(remote) when set, else on this
      host (created when missing).
    type: str
  remote:
    description: >-
      The host O(dest) is on, reached over SSH with that host's Ansible connection settings
      (rsync C(-e ssh ...)); a non-root O(remote.user) runs rsync there through C(sudo -n).
    type: dict
    suboptions:
      host: {description: Address or name (ansible_host)., type: str, required: true}
      user: {description: SSH user (ansible_user)., type: str}
      port: {description: SSH port (ansible_port)., type: int}
      private_key: {description: ansible_ssh_private_key_file., type: str}
      common_args: {description: ansible_ssh_common_args., type: str, default: ""}
      extra_args: {description: ansible_ssh_extra_args., type: str, default: ""}
  checksum:
    description: Compare every file by checksum instead of size and time (reads every file on both ends).
    type: bool
    default: false
  delete:
    description: Remove files from O(dest) that O(src) does not have.
    type: bool
    default: true
  hf:
    description: The argv that starts huggingface_hub's CLI (C(hf)) on this node.
    type: list
    elements: str
  repo:
    description: Hub model id (C(org/name)).
    type: str
  revision:
    description: Hub revision (branch, tag or commit); the default branch when unset.
    type: str
  token:
    description: Hugging Face token, passed as HF_TOKEN in the environment.
    type: str
  cache:
    description: >-
      The hub cache directory on this host that O(hf) writes to, for the byte count; unset:
      huggingface_hub's default for this module's environment (C(~/.cache/huggingface/hub)).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Pull the model from the head's share
  model_stage:
    mode: rsync
    src: rsync://10.0.0.1:8873/model/
    dest: /opt/servekit/models/lab-tiny/

- name: Copy the model from the control node onto the head
  model_stage:
    mode: rsync
    src: /srv/models/lab-tiny/
    dest: /opt/servekit/models/lab-tiny/
    remote: {host: 10.0.0.1, user: root, private_key: ~/.ssh/id_ed25519}
  delegate_to: localhost

- name: Download a hub model into the node's cache
  model_stage:
    mode: hub
    hf: [/opt/servekit/venv/bin/hf]
    repo: openai/gpt-oss-20b
    token: "{{ vllm_hf_token }}"
    cache: /root/.cache/huggingface/hub
"""

RETURN = r"""
bytes:
  description: >-
    Model bytes written on the node: rsync's "Total transferred file size", or how much the
    repository's cache folder grew. 0 when nothing changed.
  returned: always
  type: int
literal_bytes:
  description: rsync only. Data that crossed the network for those files (less when only blocks changed).
  returned: when mode is rsync
  type: int
wire_bytes:
  description: rsync only. Everything the transfer sent and received, protocol included.
  returned: when mode is rsync
  type: int
stats:
  description: rsync only. Every counter of C(--stats).
  returned: when mode is rsync
  type: dict
cmd:
  description: The command run.
  returned: always
  type: list
"""

import os  # noqa: E402 - documentation first
import platform  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.model_stage import (  # noqa: E402
    default_hub_cache,
    hf_download_argv,
    hub_repo_dir,
    parse_rsync_stats,
    rsync_argv,
    ssh_rsh,
    ssh_target,
    stats_changed,
    tree_bytes,
)


def run_rsync(module: AnsibleModule) -> dict:
    p = module.params
    for name in ("src", "dest"):
        if not p[name]:
            module.fail_json(msg=f"model_stage: mode rsync needs {name}")
    if shutil.which("rsync") is None:
        module.fail_json(msg=f"model_stage: rsync is not installed on {platform.node()}, which runs this "
                             "transfer (the control node for the copy onto the head): apt-get install rsync")
    remote = p["remote"]
    try:
        if remote:
            dest = ssh_target(remote["host"], p["dest"], remote["user"])
            rsh = ssh_rsh(port=remote["port"], private_key=remote["private_key"],
                          common_args=remote["common_args"] or "", extra_args=remote["extra_args"] or "")
            sudo = "sudo -n rsync" if remote["user"] not in (None, "", "root") else None
        else:
            dest, rsh, sudo = p["dest"], None, None
        argv = rsync_argv(p["src"], dest, rsh=rsh, rsync_path=sudo, checksum=p["checksum"],
                          delete=p["delete"], dry_run=module.check_mode)
    except ValueError as exc:
        module.fail_json(msg=f"model_stage: {exc}")
    if not remote and not p["dest"].startswith("rsync://") and not module.check_mode:
        os.makedirs(p["dest"], mode=0o755, exist_ok=True)
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
    if rc != 0:
        module.fail_json(msg=f"model_stage: rsync exited {rc}: {err.strip() or out.strip()}", cmd=argv, rc=rc)
    stats = parse_rsync_stats(out)
    return {"changed": stats_changed(stats), "bytes": stats["bytes"],
            "literal_bytes": stats.get("literal_bytes", 0),
            "wire_bytes": stats.get("bytes_sent", 0) + stats.get("bytes_received", 0),
            "stats": stats, "cmd": argv}


def run_hub(module: AnsibleModule) -> dict:
    p = module.params
    for name in ("hf", "repo"):
        if not p[name]:
            module.fail_json(msg=f"model_stage: mode hub needs {name}")
    try:
        argv = hf_download_argv(p["hf"], p["repo"], revision=p["revision"])
    except ValueError as exc:
        module.fail_json(msg=f"model_stage: {exc}")
    cache = p["cache"] or default_hub_cache(dict(os.environ), os.path.expanduser("~"))
    repo_dir = hub_repo_dir(cache, p["repo"])
    if module.check_mode:
        cached = os.path.isdir(os.path.join(repo_dir, "snapshots")) and bool(
            os.listdir(os.path.join(repo_dir, "snapshots")))
        return {"changed": not cached, "bytes": 0, "cmd": argv}
    before = tree_bytes(repo_dir)
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if p["token"]:
        env["HF_TOKEN"] = p["token"]
    rc, out, err = module.run_command(argv, environ_update=env)
    if rc != 0:
        module.fail_json(msg=f"model_stage: hf download of {p['repo']} exited {rc}: {err.strip()[-2000:]}",
                         cmd=argv, rc=rc)
    grown = max(tree_bytes(repo_dir) - before, 0)
    lines = out.strip().splitlines()
    return {"changed": grown > 0, "bytes": grown, "snapshot": lines[-1] if lines else "", "cmd": argv}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "choices": ["rsync", "hub"], "required": True},
            "src": {"type": "str"},
            "dest": {"type": "str"},
            "remote": {"type": "dict", "options": {
                "host": {"type": "str", "required": True},
                "user": {"type": "str"},
                "port": {"type": "int"},
                "private_key": {"type": "str", "no_log": False},
                "common_args": {"type": "str", "default": ""},
                "extra_args": {"type": "str", "default": ""},
            }},
            "checksum": {"type": "bool", "default": False},
            "delete": {"type": "bool", "default": True},
            "hf": {"type": "list", "elements": "str"},
            "repo": {"type": "str"},
            "revision": {"type": "str"},
            "token": {"type": "str", "no_log": True},
            "cache": {"type": "path"},
        },
        supports_check_mode=True,
    )
    result = run_rsync(module) if module.params["mode"] == "rsync" else run_hub(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
