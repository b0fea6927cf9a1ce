"""Damage on disk for tests: bit rot that metadata cannot see."""

from __future__ import annotations

import os
from pathlib import Path


def flip_in_place(path: Path, offset: int) -> None:
    """Bit rot: one byte changes; size, inode and mtime stay (a manifest still matches)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
