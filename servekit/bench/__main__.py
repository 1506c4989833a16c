"""``python -m servekit.bench``: the serving benchmark (servekit/bench/serving.py)."""

import sys

from servekit.bench.serving import main

sys.exit(main())
