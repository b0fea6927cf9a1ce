"""Fixtures for every test: the process guard (tests/procguard.py) fails a test that leaves a
process running."""

from __future__ import annotations

from .procguard import guard_session, guard_test

__all__ = ["guard_session", "guard_test"]
