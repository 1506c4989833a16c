#!/usr/bin/python
"""Ansible module: load nvidia_peermem, and say why when it cannot load."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpudirect_peermem
short_description: Load nvidia_peermem where the GPUDirect decision chose it; explain a failure
version_added: "0.1.0"
description:
  - Loads C(nvidia_peermem) with C(modprobe) unless C(/sys/module/nvidia_peermem) exists. On failure reads
    the kernel log and fails with the reason. C(Unknown symbol ib_register_peer_memory_client) means the inbox
    RDMA stack; C(Invalid argument) a module built without the peer-memory API, or a GPU without
    GPUDirect RDMA.
  - Run it only where C(servekit_node.gpudirect.mode) is C(peermem), as the role does. The decision already
    checked that a module exports the peer-memory API.
  - Supports check mode (reports the load it would do) and diff mode.
options:
  sysfs_root:
    description: Root of sysfs (tests point it at a prepared tree).
    type: path
    default: /sys
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Load nvidia_peermem
  gpudirect_peermem:
  when: servekit_node.gpudirect.mode == 'peermem'
"""

RETURN = r"""
loaded:
  description: Whether nvidia_peermem is loaded after the task (in check mode, whether it would be).
  returned: always
  type: bool
"""

import os  # noqa: E402 - documentation first

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.node_gpu import explain_peermem_failure  # noqa: E402


def main() -> None:
    module = AnsibleModule(argument_spec={"sysfs_root": {"type": "path", "default": "/sys"}},
                           supports_check_mode=True)
    marker = os.path.join(module.params["sysfs_root"], "module", "nvidia_peermem")
    if os.path.isdir(marker):
        module.exit_json(changed=False, loaded=True)
    diff = {"before": "nvidia_peermem: not loaded\n", "after": "nvidia_peermem: loaded\n"}
    if module.check_mode:
        module.exit_json(changed=True, loaded=True, diff=diff)
    rc, _, err = module.run_command([module.get_bin_path("modprobe", required=True), "nvidia_peermem"])
    if rc != 0 or not os.path.isdir(marker):
        dmesg = module.get_bin_path("dmesg")
        kernel_log = module.run_command([dmesg])[1] if dmesg else ""
        module.fail_json(msg=explain_peermem_failure(err or "modprobe nvidia_peermem failed",
                                                     kernel_log[-20000:]), loaded=False)
    module.exit_json(changed=True, loaded=True, diff=diff)


if __name__ == "__main__":
    main()
