"""The admin listener: Prometheus metrics, liveness and readiness, and a live status page."""

from .server import AdminServer, token_required

__all__ = ["AdminServer", "token_required"]
