"""Benchmarks: fluxd against reference tools side by side (`python -m benchmarks SCENARIO`)."""

from __future__ import annotations


class BenchError(Exception):
    """A benchmark could not run or produced an invalid measurement; the message says why."""
