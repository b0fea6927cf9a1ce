"""Scopes (verbs on path prefixes, `write:/backups/`) and the Grant a session acts under.

A prefix names a subtree: `write:/backups/` allows writing `/backups` and everything below it,
not `/backups2`. Prefixes are normalised with the path rules (PROTOCOL.md section 17), so
`read:/a//b/` and `read:/a/b` are the same scope. Paths in scopes are the ones the client
sees; a subject confined to its own root (`root = "/users/{sub}"`) names paths inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fluxproto.errors import PermissionDenied

from ..storage.paths import normalize

#: `admin:/` lets a token read the admin listener (metrics, health, status) off loopback.
VERBS = ("read", "write", "list", "delete", "admin")
#: What anonymous clients may do unless configured otherwise (the pre-token behaviour).
ALL_SCOPES = "read:/ write:/ list:/ delete:/"

__all__ = ["ALL_SCOPES", "VERBS", "Grant", "Scope", "parse_scopes", "subject_root"]


@dataclass(frozen=True, slots=True)
class Scope:
    """One verb on one subtree; `prefix` is normalised ("" is the whole tree)."""

    verb: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse `VERB:/PREFIX`.

        Raises:
            ValueError: unknown verb, missing path, or a path the sandbox refuses.
        """
        verb, sep, path = text.partition(":")
        if verb not in VERBS or not sep:
            raise ValueError(
                f"scope {text!r} is not VERB:/PATH with VERB one of {', '.join(VERBS)}"
            )
        if not path.startswith("/"):
            raise ValueError(f"scope {text!r}: the path must start with /")
        try:
            return cls(verb, normalize(path))
        except PermissionDenied as exc:
            raise ValueError(f"scope {text!r}: {exc.message}") from None

    def covers(self, verb: str, rel: str) -> bool:
        """True if this scope allows `verb` on the normalised path `rel`."""
        if verb != self.verb:
            return False
        p = self.prefix
        return not p or rel == p or rel.startswith(p + "/")

    def __str__(self) -> str:
        return f"{self.verb}:/{self.prefix}{'/' if self.prefix else ''}"


def parse_scopes(scopes: str | Iterable[str]) -> tuple[Scope, ...]:
    """Scopes from a space-separated string (the JWT `scope` claim) or an iterable of them.

    Raises:
        ValueError: any scope is malformed, or there is none.
    """
    words = scopes.split() if isinstance(scopes, str) else [w for s in scopes for w in s.split()]
    if not words:
        raise ValueError("no scope given (example: write:/backups/)")
    return tuple(dict.fromkeys(Scope.parse(w) for w in words))


def subject_root(template: str, subject: str) -> str:
    """The normalised root of `subject` from a template such as `/users/{sub}`.

    Raises:
        PermissionDenied: the subject cannot be one path component (`/`, `..`, control
            characters, ...), so it cannot be given a folder of its own.
    """
    if "{sub}" not in template:
        return normalize(template)
    try:
        ok = bool(subject) and normalize(subject) == subject and "/" not in subject
    except PermissionDenied:
        ok = False
    if not ok:
        raise PermissionDenied(f"subject {subject[:64]!r} cannot name a folder of its own")
    return normalize(template.replace("{sub}", subject))


@dataclass(frozen=True)
class Grant:
    """Who a connection acts as and what it may do.

    Attributes:
        subject: the token's `sub`, or "anonymous".
        jti: the token's id (None for anonymous access), for revocation and the access log.
        scopes: what the subject may do, on paths as the client names them.
        root: normalised subtree the subject is confined to ("" for the whole root).
        expires: the token's `exp` (Unix seconds), None for anonymous access.
    """

    subject: str
    jti: str | None
    scopes: tuple[Scope, ...]
    root: str = ""
    expires: float | None = None

    def check(self, path: str, *verbs: str) -> str:
        """Require one of `verbs` on the client's `path`; return the path in storage terms.

        Raises:
            PermissionDenied: the path is refused by the sandbox, or no scope covers it.
        """
        rel = normalize(path)
        if not any(s.covers(v, rel) for s in self.scopes for v in verbs):
            shown = "/" + rel
            raise PermissionDenied(
                f"token of {self.subject!r} does not allow {verbs[0]} on {shown}"
            )
        if not self.root:
            return rel
        return f"{self.root}/{rel}" if rel else self.root
