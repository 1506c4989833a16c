"""Model staging before vLLM starts: rsync command lines, rsync ``--stats`` parsing, the hub
download's command line and cache measure. Pure functions; ``library/model_stage.py`` runs them.

Why rsync, and in two legs (roles/vllm/tasks/model.yml): the control node copies the model once
onto the head (rsync over the SSH connection Ansible itself uses), then every other node that
may hold a rank pulls it from the head over the data network, from an rsync daemon the head runs
only while the pull lasts. rsync sends a file only when its size or modification time differ
(``-a`` keeps the times, so an unchanged file is never sent again), checks every file it sends
against a whole-file checksum, keeps a broken transfer's part under ``.rsync-partial`` to resume
it, and sends only the changed blocks of a changed file (rsync(1): --partial-dir, --checksum,
"the rsync algorithm").
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

# rsync --stats lines (rsync 3.1+, main.c output_summary; numbers grouped with ',' or the
# locale's separator) and the result keys they fill.
_STATS_KEYS = {
    "Number of files": "files",
    "Number of created files": "created",
    "Number of deleted files": "deleted",
    "Number of regular files transferred": "files_transferred",
    "Total file size": "total_size",
    "Total transferred file size": "bytes",
    "Literal data": "literal_bytes",
    "Matched data": "matched_bytes",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}
_STATS_LINE = re.compile(r"^(?P<key>[A-Z][A-Za-z ]+?): (?P<value>[0-9][0-9,.']*)")
# Kept by rsync under the destination while a file is incomplete (relative: rsync itself
# excludes it from --delete and from the file list, rsync(1) --partial-dir).
PARTIAL_DIR = ".rsync-partial"


def parse_rsync_stats(text: str) -> dict[str, int]:
    """The counters of ``rsync --stats`` output, as ints (every key of ``_STATS_KEYS`` found).

    ``bytes`` is "Total transferred file size" (the size of the files rsync (re)wrote: 0 when
    nothing changed), ``literal_bytes`` the data that crossed the wire for them (less when only
    some blocks changed), ``bytes_sent``/``bytes_received`` everything the transfer moved,
    protocol included.
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = _STATS_LINE.match(line.strip())
        if not match or match["key"] not in _STATS_KEYS:
            continue
        found[_STATS_KEYS[match["key"]]] = int(re.sub(r"[^0-9]", "", match["value"]))
    if "bytes" not in found:
        raise ValueError("no 'Total transferred file size' line: not the output of rsync --stats")
    return found


def stats_changed(stats: dict[str, int]) -> bool:
    """Whether the transfer changed the destination: a file written, created or deleted."""
    return any(stats.get(key, 0) for key in ("files_transferred", "created", "deleted"))


def rsync_argv(src: str, dest: str, *, rsync: str = "rsync", rsh: str | None = None,
               rsync_path: str | None = None, checksum: bool = False, delete: bool = True,
               dry_run: bool = False) -> list[str]:
    """The rsync command that makes ``dest`` a copy of ``src`` (both directories, with their
    trailing '/'); ``rsh`` the remote shell for an ``host:path`` end (``-e``)."""
    for name, value in (("src", src), ("dest", dest)):
        if not value.endswith("/"):
            raise ValueError(f"{name} {value!r}: needs a trailing '/' (a directory's contents)")
    # -a: times, modes, links kept, so the next run's quick check (size + mtime) finds the file
    # unchanged. --no-owner/--no-group: root owns the files on the node (as the copy module did).
    argv = [rsync, "-a", "--no-owner", "--no-group", "--chmod=D0755,F0644", f"--partial-dir={PARTIAL_DIR}",
            "--stats"]
    if checksum:
        argv.append("--checksum")  # reads every file on both ends: slow on large models
    if delete:
        argv.append("--delete")  # a shard left from an older copy would be loaded too
    if dry_run:
        argv.append("--dry-run")
    if rsh:
        argv += ["-e", rsh]
    if rsync_path:
        argv.append(f"--rsync-path={rsync_path}")
    return [*argv, src, dest]


def ssh_rsh(*, port: int | None = None, private_key: str | None = None, common_args: str = "",
            extra_args: str = "", ssh: str = "ssh") -> str:
    """The ``-e`` of an rsync to a node over SSH, from the node's Ansible connection variables
    (ansible_port, ansible_ssh_private_key_file, ansible_ssh_common_args, ansible_ssh_extra_args).

    rsync splits this string on spaces itself and honours quotes (rsync(1) -e), so the
    inventory's argument strings pass through as they are. BatchMode: no password prompt
    can hang the play.
    """
    words = [ssh, "-o", "BatchMode=yes"]
    if port:
        words += ["-p", str(int(port))]
    if private_key:
        words += ["-i", private_key]
    return " ".join([*words, *(a for a in (common_args.strip(), extra_args.strip()) if a)])


def ssh_target(host: str, path: str, user: str | None = None) -> str:
    """rsync's ``[user@]host:path`` of a remote end (an IPv6 address in brackets)."""
    if not host:
        raise ValueError("remote host: empty")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{user + '@' if user else ''}{host}:{path}"


def hf_download_argv(hf: Sequence[str], repo: str, *, revision: str | None = None) -> list[str]:
    """``hf download`` (huggingface_hub >= 1.0's CLI; ``huggingface-cli`` before) of a whole
    model repository into the default cache. The token never appears here: the module passes
    HF_TOKEN in the environment."""
    if not repo or repo.startswith("/") or repo.count("/") > 1:
        raise ValueError(f"model {repo!r}: a hub id needs the form 'org/name' or 'name'")
    argv = [*hf, "download", repo]
    if revision:
        argv += ["--revision", revision]
    return argv


def default_hub_cache(env: dict[str, str], home: str) -> str:
    """The hub cache huggingface_hub uses in ``env`` (huggingface_hub/constants.py: HF_HUB_CACHE,
    else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, HF_HOME defaulting to
    $XDG_CACHE_HOME/huggingface, XDG_CACHE_HOME to ~/.cache)."""
    hf_home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"),
                                                  "huggingface")
    return env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")


def hub_repo_dir(cache: str, repo: str) -> str:
    """A model's folder in a huggingface_hub cache (``models--org--name``,
    huggingface_hub/constants.py REPO_ID_SEPARATOR)."""
    return os.path.join(cache, "models--" + repo.replace("/", "--"))


def tree_bytes(path: str) -> int:
    """Bytes of the regular files under ``path`` (links not followed: a hub snapshot's files
    are links into blobs/, counted once there); 0 when it does not exist."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total
