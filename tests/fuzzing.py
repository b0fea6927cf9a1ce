"""How many examples each fuzz property runs: 800 in `make test`, more under `make fuzz`.

`make fuzz` (benchmarks/fuzz.py) sets FLUX_FUZZ_EXAMPLES and counts what hypothesis ran.
"""

from __future__ import annotations

import os

FUZZ_EXAMPLES = int(os.environ.get("FLUX_FUZZ_EXAMPLES", "800"))
