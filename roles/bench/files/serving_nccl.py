#!/usr/bin/env python3
"""Copy the NCCL that the serving stack's torch loads into OUT (include/nccl.h, lib/libnccl.so.2).

Run with the serving Python: the node venv's (cluster_runtime native) or the serving image's
(container, OUT mounted). torch links NCCL dynamically: PyPI wheels load the
``nvidia-nccl-cu*`` wheel's ``nvidia/nccl/lib/libnccl.so.2`` (header in ``nvidia/nccl/include``),
NGC images the system ``libnccl.so.2`` (header in ``/usr/include``). Which one is read from
this process's memory map after ``import torch``, so the library measured is the one vLLM runs.
Prints a JSON line: the library and header copied, torch's NCCL version.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def loaded_nccl(maps: str) -> str | None:
    """The libnccl.so path in a /proc/<pid>/maps text; None when NCCL is not mapped."""
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[5].strip() if len(line.split(maxsplit=5)) == 6 else ""
        if Path(path).name.startswith("libnccl.so"):
            return path
    return None


def nccl_header(library: str) -> Path | None:
    """nccl.h beside the library (a wheel's ../include) or the system's."""
    for candidate in (Path(library).parent.parent / "include" / "nccl.h", Path("/usr/include/nccl.h")):
        if candidate.is_file():
            return candidate
    return None


def main(out: str) -> int:
    import torch  # libtorch_cuda loads NCCL at import (no GPU needed)

    library = loaded_nccl(Path("/proc/self/maps").read_text())
    if not library:
        print("import torch mapped no libnccl.so: a CPU build of torch, or NCCL linked statically",
              file=sys.stderr)
        return 1
    header = nccl_header(library)
    if not header:
        print(f"{library} has no nccl.h beside it nor in /usr/include: set bench_nccl_home",
              file=sys.stderr)
        return 1
    (Path(out) / "include").mkdir(parents=True, exist_ok=True)
    (Path(out) / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copy2(header, Path(out) / "include" / "nccl.h")
    shutil.copy2(Path(library).resolve(), Path(out) / "lib" / "libnccl.so.2")
    link = Path(out) / "lib" / "libnccl.so"  # the name nccl-tests links with (-lnccl)
    link.unlink(missing_ok=True)
    link.symlink_to("libnccl.so.2")
    version = ".".join(str(v) for v in torch.cuda.nccl.version())
    print(json.dumps({"library": library, "header": str(header), "torch_nccl_version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
