"""Storage housekeeping for a long-running daemon: recovery at start, garbage collection of
abandoned uploads and orphaned manifests, and scrubbing committed files against their manifests.

Each function works on a LocalStorage and blocks (the daemon runs them in its thread pool).
Nothing here touches a staged upload a live session holds: that session's lock on the journal
keeps recovery and collection away from it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from fluxio.staging import StagedFile
from fluxproto.errors import Conflict, FluxError

from .base import Collected, Recovered, ScrubReport
from .local import LocalStorage, Manifest, show_chunks

__all__ = ["collect", "recover", "scrub"]


def _staged(storage: LocalStorage) -> Iterator[tuple[Path, Path, Path]]:
    """(folder, data, journal) of every staged upload."""
    with contextlib.suppress(FileNotFoundError):
        for folder in sorted(storage._staging.iterdir()):
            if folder.is_dir() and not folder.is_symlink():
                yield folder, folder / "data", folder / "journal"


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def recover(storage: LocalStorage) -> Recovered:
    """Rebuild the staging area after a crash: cut torn journal tails, count what each staged
    upload records, and remove folders whose journal is missing or unreadable."""
    found = Recovered()
    for folder, data, journal in _staged(storage):
        try:
            chunks = None
            if journal.exists():
                chunks = StagedFile.recover(data, journal, label=folder.name)
        except Conflict:
            found.busy += 1
            continue
        if chunks is None:
            _remove_folder(folder)
            found.removed += 1
        else:
            found.uploads += 1
            found.chunks += chunks
    return found


def collect(storage: LocalStorage, grace: float, now: float) -> Collected:
    """Remove staged uploads untouched for `grace` seconds that no session holds, and the
    manifests of files that no longer exist."""
    done = Collected()
    for folder, data, journal in _staged(storage):
        try:
            touched = max(p.stat().st_mtime for p in (folder, data, journal) if p.exists())
        except (OSError, ValueError):
            continue
        if now - touched < grace:
            continue
        size = data.stat().st_size if data.exists() else 0
        if StagedFile.discard_if_idle(data, journal, label=folder.name):
            with contextlib.suppress(OSError):
                folder.rmdir()
            done.uploads += 1
            done.bytes += size
    for path, manifest in _manifests(storage):
        if manifest is None or not _exists(storage, manifest.path):
            with contextlib.suppress(OSError):
                path.unlink()
            done.manifests += 1
    return done


def _manifests(storage: LocalStorage) -> Iterator[tuple[Path, Manifest | None]]:
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(storage._manifests.iterdir()):
            if path.suffix == ".tmp":
                continue
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            yield path, Manifest.unpack(raw)


def _exists(storage: LocalStorage, rel: str) -> bool:
    try:
        storage._stat(rel)
    except FileNotFoundError:
        return False
    except (OSError, FluxError):
        return True  # unreadable is not gone: keep its manifest
    return True


def scrub(storage: LocalStorage) -> ScrubReport:
    """Read every file that has a manifest and check each chunk and the whole-file digest."""
    report = ScrubReport()
    for path, manifest in _manifests(storage):
        if manifest is None:
            continue
        try:
            st = storage._stat(manifest.path)
        except (OSError, FluxError):
            st = None
        if st is None or not manifest.matches(st):
            with contextlib.suppress(OSError):
                path.unlink()  # describes a file that is gone or was changed outside fluxd
            report.stale += 1
            continue
        report.checked += 1
        report.bytes += manifest.size
        problem = _verify(storage, manifest)
        if problem is not None:
            report.corrupt.append(f"/{manifest.path}: {problem}")
    return report


def _verify(storage: LocalStorage, manifest: Manifest) -> str | None:
    """None if the file matches its manifest, else what is wrong."""
    try:
        dl = storage.open_download(manifest.path, manifest.chunk_size)
    except FluxError as exc:
        return exc.message
    try:
        bad, whole = dl.check()
    except FluxError as exc:
        return exc.message
    finally:
        dl.close()
    if bad:
        return f"{len(bad)} corrupt chunk(s): {show_chunks(bad)}"
    if whole != dl.digest:
        return "whole-file digest mismatch"
    return None
