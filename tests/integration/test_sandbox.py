"""The traversal corpus against a real daemon, over TCP and QUIC: every request on every hostile
path is refused with 403, and nothing is created, changed or read outside the root."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxctl.connect import ClientOptions, connect
from fluxctl.session import ClientSession
from fluxctl.trust import TrustPolicy
from fluxctl.url import FluxURL
from fluxproto import (
    MIN_CHUNK,
    Delete,
    Deleted,
    Entries,
    FluxError,
    Frame,
    Info,
    ListDir,
    Meta,
    OpenDownload,
    OpenUpload,
    PermissionDenied,
    Stat,
    Status,
)
from fluxproto.frames import MAX_PATH
from tests import hostile_paths

from .conftest import Daemon, Fluxctl

#: Each request a path can be used in: the frame asking (given its rid and the path), and the
#: reply that would mean success.
REQUESTS: dict[str, tuple[Callable[[int, str], Frame], type[Frame]]] = {
    "upload": (lambda rid, p: OpenUpload(rid, p, 10, MIN_CHUNK), Status),
    "download": (OpenDownload, Meta),
    "stat": (Stat, Info),
    "list": (ListDir, Entries),
    "delete": (Delete, Deleted),
}


def snapshot(top: Path, skip: Path | None = None) -> dict[str, str]:
    """Every entry under `top` with a digest of its content (or link target)."""
    found: dict[str, str] = {}
    for p in sorted(top.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_symlink():
            found[str(p)] = "-> " + str(p.readlink())
        elif p.is_file():
            found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            found[str(p)] = "dir"
    return found


async def refusals(daemon: Daemon, transport: str, paths: list[str]) -> list[str]:
    """Send every request for every path on one connection; return what was not refused."""
    opts = ClientOptions(
        trust=TrustPolicy.from_options(None, daemon.fingerprint), transport=transport
    )
    ch = await connect(FluxURL("127.0.0.1", daemon.port, "/"), opts)
    session = ClientSession(ch)
    leaks: list[str] = []
    try:
        for path in paths:
            for name, (ask, success) in REQUESTS.items():
                if name == "delete" and path in hostile_paths.PLANTED:
                    continue  # deleting a link removes the link (inside the root), see below
                req = await session.open(lambda rid, ask=ask, path=path: ask(rid, path))
                try:
                    answer = await req.expect(success, 10)
                except PermissionDenied:
                    continue
                except FluxError as exc:
                    leaks.append(f"{name} {path!r}: {type(exc).__name__} {exc}")
                    continue
                leaks.append(f"{name} {path!r}: answered {answer!r:.80}")
    finally:
        await session.close()
        ch.close()
    return leaks


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_every_hostile_path_is_refused(daemon: Daemon, tmp_path: Path, transport: str) -> None:
    outside = tmp_path / "outside"
    hostile_paths.plant_symlinks(daemon.root, outside)
    # Paths over MAX_PATH bytes cannot even be put in a frame (the codec refuses them; see
    # tests/protocol); everything else goes on the wire as is.
    sendable = [p for p in hostile_paths.ALL if len(p.encode("utf-8", "replace")) <= MAX_PATH]
    assert len(sendable) >= 50
    before_root = snapshot(daemon.root, skip=daemon.root / ".flux")
    before_out = snapshot(tmp_path, skip=daemon.home)
    leaks = asyncio.run(refusals(daemon, transport, sendable))
    assert leaks == [], "\n".join(leaks)
    assert snapshot(daemon.root, skip=daemon.root / ".flux") == before_root
    assert snapshot(tmp_path, skip=daemon.home) == before_out
    staging = daemon.root / ".flux" / "staging"
    assert list(staging.iterdir()) == [], "no upload was even staged"
    refused = [r for r in daemon.events("access") if r["result"].startswith("error 403")]
    planted = len([p for p in sendable if p in hostile_paths.PLANTED])
    assert len(refused) == len(sendable) * len(REQUESTS) - planted


def test_deleting_a_link_that_leads_out_removes_only_the_link(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    hostile_paths.plant_symlinks(daemon.root, outside)
    for name in ("out", "rel", "pw"):
        assert fluxctl("rm", daemon.url(name), "--pin", str(daemon.fingerprint)).code == 0
        assert not (daemon.root / name).is_symlink()
    assert (outside / "secret.txt").read_text() == "outside the root"
    assert Path("/etc/passwd").exists()


@pytest.mark.parametrize("path", ["%ef%bc%8e%ef%bc%8e/x", "%e2%80%a5/x", "..%e2%88%95x"])
def test_fluxctl_send_to_an_encoded_look_alike_is_refused(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, path: str
) -> None:
    # fluxctl sends the path as typed (it decodes nothing); the daemon must see through it.
    local = tmp_path / "f"
    local.write_bytes(b"payload")
    before = snapshot(daemon.root, skip=daemon.root / ".flux")
    result = fluxctl("send", str(local), daemon.url(path), "--pin", str(daemon.fingerprint))
    assert result.code == 4, result.stderr
    assert "reads as" in result.stderr
    assert snapshot(daemon.root, skip=daemon.root / ".flux") == before
