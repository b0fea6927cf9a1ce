"""Who a client is and what it may do: tokens, scopes, revocation, anonymous access."""

from __future__ import annotations

from .scopes import ALL_SCOPES, VERBS, Grant, Scope, parse_scopes, subject_root

__all__ = ["ALL_SCOPES", "VERBS", "Grant", "Scope", "parse_scopes", "subject_root"]
