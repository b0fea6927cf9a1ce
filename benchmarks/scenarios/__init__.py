"""Scenarios runnable as `python -m benchmarks NAME`; each module has HELP, add_arguments, run."""

from __future__ import annotations

from types import ModuleType

from . import (
    admin,
    cluster,
    concurrency,
    core,
    housekeeping,
    http,
    links,
    quic,
    ratelimit,
    startup,
    tree,
)

SCENARIOS: dict[str, ModuleType] = {
    "core": core,
    "quic": quic,
    "links": links,
    "concurrency": concurrency,
    "ratelimit": ratelimit,
    "housekeeping": housekeeping,
    "startup": startup,
    "tree": tree,
    "cluster": cluster,
    "http": http,
    "admin": admin,
}
