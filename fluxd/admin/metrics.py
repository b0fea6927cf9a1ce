"""The daemon's Prometheus metrics, in a registry of its own.

Counters move where the daemon already records things: each access record (requests by op
and result, bytes, durations, refusals) and each housekeeping run. What is a level (connections,
uploads, memory) is read from functions the server supplies: the admin server's read the
snapshot the daemon's loop publishes, so a scrape on the admin thread touches nothing it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Request durations (seconds): from a stat on loopback to a long upload.
BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0, 1800.0)

__all__ = ["Levels", "Metrics"]


class Levels:
    """Readings taken at scrape time, supplied by the server as functions."""

    def __init__(
        self,
        connections: Callable[[], dict[str, int]],
        uploads: Callable[[], int],
        staged: Callable[[], int],
        memory: Callable[[], int],
        migrations: Callable[[], int] = lambda: 0,
    ) -> None:
        self.connections, self.uploads, self.staged, self.memory = (
            connections,
            uploads,
            staged,
            memory,
        )
        #: QUIC connections whose client moved to another address (a count, never lowered).
        self.migrations = migrations


class _LevelCollector(Collector):
    def __init__(self, levels: Levels) -> None:
        self.levels = levels

    def collect(self) -> Iterable[Metric]:
        conns = GaugeMetricFamily(
            "fluxd_connections_open", "Client connections open", labels=["transport"]
        )
        for transport, count in sorted(self.levels.connections().items()):
            conns.add_metric([transport], count)
        yield conns
        yield GaugeMetricFamily("fluxd_uploads_open", "Uploads open", value=self.levels.uploads())
        yield GaugeMetricFamily(
            "fluxd_upload_staged_bytes",
            "Bytes stored so far by the uploads open",
            value=self.levels.staged(),
        )
        yield GaugeMetricFamily(
            "fluxd_memory_budget_bytes",
            "Bytes of received chunks held in memory (limits.memory)",
            value=self.levels.memory(),
        )
        yield CounterMetricFamily(
            "fluxd_quic_migrations",
            "QUIC connections whose client moved to another address",
            value=self.levels.migrations(),
        )


def result_label(result: str | None) -> str:
    """A bounded label for an access record's result: ok, cancelled, refused, or `error NNN`."""
    if result is None:
        return "cancelled"
    if result.startswith("error "):
        return result.partition(":")[0]
    return "ok" if result == "ok" else "refused"


class Metrics:
    """One daemon's metrics; `observe` takes each access record."""

    def __init__(self, levels: Levels) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fluxd_requests", "Requests by op and result", ["op", "result"], registry=r
        )
        self.bytes_in = Counter("fluxd_bytes_in", "Payload bytes received (uploads)", registry=r)
        self.bytes_out = Counter("fluxd_bytes_out", "Payload bytes sent (downloads)", registry=r)
        self.resent = Counter(
            "fluxd_chunks_resent",
            "Chunks sent twice: an upload's written again (a client's lanes both sent it), a"
            " shared download's sent again on another lane",
            registry=r,
        )
        self.duration = Histogram(
            "fluxd_request_duration_seconds",
            "Request durations",
            ["op"],
            buckets=BUCKETS,
            registry=r,
        )
        self.admission = Counter(
            "fluxd_admission_refusals",
            "Connections or requests refused by a limit",
            ["reason"],
            registry=r,
        )
        self.token_refusals = Counter(
            "fluxd_token_refusals", "Connections refused for their token", registry=r
        )
        self.housekeeping = Counter(
            "fluxd_housekeeping_runs",
            "Recoveries, collections and scrubs run",
            ["job"],
            registry=r,
        )
        r.register(_LevelCollector(levels))

    def observe(self, record: dict[str, Any]) -> None:
        """Count one access record (see access.FIELDS)."""
        op, result = str(record.get("op")), record.get("result")
        label = result_label(result)
        self.requests.labels(op, label).inc()
        if op == "connect":
            self._refused(str(result))
            return
        nbytes = record.get("bytes") or 0
        if op == "upload":
            self.bytes_in.inc(nbytes)
        elif op == "download":
            self.bytes_out.inc(nbytes)
        self.resent.inc(record.get("resent") or 0)
        if label in ("error 413", "error 503"):
            self.admission.labels("limit" if label == "error 413" else "busy").inc()
        if record.get("duration") is not None:
            self.duration.labels(op).observe(record["duration"])

    def _refused(self, result: str) -> None:
        if result.startswith("refused: too many connections"):
            self.admission.labels("connections").inc()
        elif result.startswith(("error 401", "error 403")):
            self.token_refusals.inc()
        elif result.startswith(("error 413", "error 503")):
            self.admission.labels("subject").inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def counter_names(metrics: Metrics) -> Iterator[str]:
    """Names of the families registered (for tests and docs)."""
    for family in metrics.registry.collect():
        yield family.name
