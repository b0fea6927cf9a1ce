"""Copying a folder tree into a running peer: `fluxctl send -r`, `rsync -a` and `scp -r`, each
run measured, and what each tool says about the run checked against what it should say."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import BenchError
from ..measure import Run
from ..treefiles import TreeSpec
from .flux import FluxPeer
from .process import json_report
from .ssh import SshPeer

FRESH, RERUN = "fresh", "rerun"
_RSYNC_TRANSFERRED = re.compile(r"^Number of regular files transferred:\s*([\d,.]+)\s*$", re.M)


@dataclass
class Copy:
    """One measured client run: the process, the server's peak RSS (KiB), what the tool said."""

    run: Run
    server_kib: int | None
    details: dict[str, Any] = field(default_factory=dict)


class TreeClient(Protocol):
    """A peer that takes a whole tree: where a copy named `name` lands, and one copy into it."""

    tool: str

    def dest(self, name: str) -> Path: ...

    def copy(self, src: Path, name: str, kind: str, spec: TreeSpec, timeout: float) -> Copy:
        """Copy the tree `src` (made from `spec`) to `dest(name)`, the `kind` of run it is
        (FRESH: into an empty destination; RERUN: the same again, nothing changed).

        Raises:
            BenchError: the tool failed, or its own account of the run is not what `kind` of
                run over `spec` should give.
        """
        ...


def check_flux_report(report: dict[str, Any], spec: TreeSpec, kind: str, strict: bool) -> None:
    """What `fluxctl send -r --json` must say: every file and byte of `spec` accounted for; a
    fresh run sends them all (exactly once if `strict`), a rerun skips them all and sends none.

    Raises:
        BenchError: it says anything else.
    """
    want = {"ok": True, "files": spec.files, "bytes": spec.bytes}
    if kind == RERUN:
        want |= {"skipped_files": spec.files, "sent": 0}
    else:
        want |= {"skipped_files": 0}
    wrong = {k: report.get(k) for k, v in want.items() if report.get(k) != v}
    sent = report.get("sent")
    if kind == FRESH and not (sent == spec.bytes or (not strict and (sent or 0) > spec.bytes)):
        wrong["sent"] = sent
    if wrong:
        raise BenchError(f"fluxctl send -r ({kind}) reported {wrong}, expected {want}: {report}")


def rsync_transferred(stdout: str) -> int:
    """The `Number of regular files transferred` of `rsync --stats` (digits grouped or not).

    Raises:
        BenchError: the line is missing.
    """
    match = _RSYNC_TRANSFERRED.search(stdout)
    if match is None:
        raise BenchError(f"rsync --stats printed no count of files transferred: {stdout!r}")
    return int(re.sub(r"[,.]", "", match[1]))


class FluxTree:
    """`fluxctl send -r SRC flux://HOST:PORT/bench/NAME` (a copy of SRC as /bench/NAME)."""

    tool = "fluxctl"

    def __init__(self, peer: FluxPeer) -> None:
        self.peer = peer

    def dest(self, name: str) -> Path:
        return self.peer.dest(name)

    def copy(self, src: Path, name: str, kind: str, spec: TreeSpec, timeout: float) -> Copy:
        argv = self.peer.send_argv(src, name, recursive=True)
        run, server_kib, reset = self.peer.measure(argv, timeout)
        report = json_report(self.tool, run)
        check_flux_report(report, spec, kind, self.peer.strict)
        since = "transfer" if reset else "daemon start"
        return Copy(run, server_kib, {"report": report, "server_peak_since": since})


class _OverSsh:
    """A tool that logs into the peer's throwaway sshd."""

    def __init__(self, peer: SshPeer) -> None:
        self.peer = peer

    def dest(self, name: str) -> Path:
        return self.peer.dest(name)


class RsyncTree(_OverSsh):
    """`rsync -a --stats -e ssh SRC/ root@HOST:DEST/` (DEST becomes a copy of SRC)."""

    tool = "rsync"

    def copy(self, src: Path, name: str, kind: str, spec: TreeSpec, timeout: float) -> Copy:
        target = f"root@{self.peer.placement.host}:{self.dest(name)}/"
        rsync = ["rsync", "-a", "--stats", "-e", self.peer.remote_shell(), f"{src}/", target]
        run, server_kib = self.peer.measure([*self.peer.placement.client_prefix, *rsync], timeout)
        moved = rsync_transferred(run.stdout)
        if moved != (spec.files if kind == FRESH else 0):
            raise BenchError(f"rsync -a ({kind}) transferred {moved} of {spec.files} files")
        return Copy(run, server_kib, self.peer.details() | {"files_transferred": moved})


class ScpTree(_OverSsh):
    """`scp -r SRC root@HOST:DEST` into a DEST that does not exist (it becomes SRC's copy)."""

    tool = "scp"

    def copy(self, src: Path, name: str, kind: str, spec: TreeSpec, timeout: float) -> Copy:
        target = f"root@{self.peer.placement.host}:{self.dest(name)}"
        scp = ["scp", "-r", "-q", *self.peer.ssh_options(), "-P", str(self.peer.port)]
        argv = [*self.peer.placement.client_prefix, *scp, str(src), target]
        run, server_kib = self.peer.measure(argv, timeout)
        return Copy(run, server_kib, self.peer.details())
