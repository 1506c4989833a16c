"""Run inside the serving image (`python3 -c`): can it run Ray and vLLM?

Prints one JSON object: each package's version or the import's error, and
whether its command is on PATH (the Ray unit runs `ray start`, the vLLM unit
`vllm serve`). The runtime stage fails on what it reports missing
(roles/runtime/filter_plugins/container.py image_probe_problems). Standard
library only, Python 3.8+ (whatever the image ships).
"""

import importlib
import json
import os
import shutil
import sys

BIN_DIR = sys.argv[1] if len(sys.argv) > 1 else ""
report = {"python": sys.version.split()[0], "packages": {}}
for name in ("ray", "vllm"):
    entry = {}
    try:
        module = importlib.import_module(name)
        entry["version"] = getattr(module, "__version__", "unknown")
    except Exception as exc:  # any import failure is the answer
        entry["error"] = f"{type(exc).__name__}: {exc}"
    command = os.path.join(BIN_DIR, name) if BIN_DIR else shutil.which(name)
    entry["command"] = command if command and os.access(command, os.X_OK) else None
    report["packages"][name] = entry
print(json.dumps(report, sort_keys=True))
