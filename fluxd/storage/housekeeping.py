"""Storage housekeeping for a long-running daemon (`base.Maintenance` on a local root): recovery
at start, garbage collection of abandoned uploads and orphaned manifests, and scrubbing
committed files against their manifests.

Every method blocks (the daemon runs them in its thread pool). Nothing here touches a staged
upload a live session holds: that session's lock on the journal keeps recovery and collection
away from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator

from fluxio.staging import StagedFile
from fluxproto.errors import Conflict, FluxError

from .base import Collected, Recovered, ScrubReport
from .local_download import open_local_download
from .local_staging import StagingArea
from .local_tree import LocalTree
from .manifests import Manifest, ManifestStore, show_chunks
from .paths import RESERVED

__all__ = ["LocalMaintenance"]


class LocalMaintenance:
    """Recovery, collection and scrub of the staging area and manifests of one local root.

    Args:
        tree: the served tree. manifests: its manifests. staging: its staging area.
    """

    def __init__(self, tree: LocalTree, manifests: ManifestStore, staging: StagingArea) -> None:
        self._tree, self._manifests, self._staging = tree, manifests, staging

    def recover(self) -> Recovered:
        """Rebuild the staging area after a crash: cut torn journal tails, count what each
        staged upload records, and remove folders whose journal is missing or unreadable."""
        found = Recovered()
        for folder, data, journal in self._staging.uploads():
            try:
                chunks = None
                if journal.exists():
                    chunks = StagedFile.recover(data, journal, label=folder.name)
            except Conflict:
                found.busy += 1
                continue
            if chunks is None:
                shutil.rmtree(folder, ignore_errors=True)
                found.removed += 1
            else:
                found.uploads += 1
                found.chunks += chunks
        return found

    def collect(self, grace: float, now: float) -> Collected:
        """Remove staged uploads untouched for `grace` seconds that no session holds, and the
        manifests of files that no longer exist."""
        done = Collected()
        for folder, data, journal in self._staging.uploads():
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
        for file, manifest in self._manifests.scan():
            if manifest is None or not self._exists(manifest.path):
                self._manifests.discard(file)
                done.manifests += 1
        return done

    def _exists(self, rel: str) -> bool:
        try:
            self._tree.stat(rel)
        except FileNotFoundError:
            return False
        except (OSError, FluxError):
            return True  # unreadable is not gone: keep its manifest
        return True

    def scrub(self) -> ScrubReport:
        """Read every file that has a manifest (a manifest file, or one the file carries) and
        check each chunk and the whole-file digest."""
        report = ScrubReport()
        scrubbed = set()
        for file, manifest in self._manifests.scan():
            if manifest is None:
                continue
            scrubbed.add(manifest.path)
            try:
                st = self._tree.stat(manifest.path)
            except (OSError, FluxError):
                st = None
            if st is None or not manifest.matches(st):
                # It describes a file that is gone or was changed outside fluxd.
                self._manifests.discard(file)
                report.stale += 1
                continue
            report.checked += 1
            report.bytes += manifest.size
            problem = self._verify(manifest)
            if problem is not None:
                report.corrupt.append(f"/{manifest.path}: {problem}")
        for manifest in self._carried(scrubbed):
            report.checked += 1
            report.bytes += manifest.size
            problem = self._verify(manifest)
            if problem is not None:
                report.corrupt.append(f"/{manifest.path}: {problem}")
        return report

    def _carried(self, skip: set[str]) -> Iterator[Manifest]:
        """The manifests files of the tree carry (group commit), but of paths in `skip`."""
        root = self._manifests.root
        for folder, dirs, files in os.walk(root):
            rel_folder = os.path.relpath(folder, root)
            if rel_folder == ".":
                rel_folder = ""
                dirs[:] = [d for d in dirs if d.casefold() != RESERVED]
            for name in files:
                rel = f"{rel_folder}/{name}" if rel_folder else name
                if rel in skip:
                    continue
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                manifest = self._manifests.load(rel, st) if stat.S_ISREG(st.st_mode) else None
                if manifest is not None:
                    yield manifest

    def _verify(self, manifest: Manifest) -> str | None:
        """None if the file matches its manifest, else what is wrong."""
        try:
            dl = open_local_download(
                self._tree, self._manifests, manifest.path, manifest.chunk_size
            )
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
