"""How many examples each fuzz property runs: 800 in `make test`, more under `make fuzz`.

`make fuzz` (benchmarks/fuzz.py) sets FLUX_FUZZ_EXAMPLES and counts what hypothesis ran.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("FLUX_FUZZ_EXAMPLES", "800"))
#: The settings of a fuzz property: FUZZ_EXAMPLES examples, no deadline, large inputs welcome.
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
