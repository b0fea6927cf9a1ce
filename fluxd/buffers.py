"""Page-aligned, recycled chunk buffers.

Received chunks are read straight into these, hashed, and written to disk with O_DIRECT (which
needs page-aligned memory). Reusing them keeps memory flat and avoids faulting in fresh pages
for every chunk: on these machines first-touch page faults cost as much as the copy itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import threading
from collections import defaultdict

PAGE = mmap.PAGESIZE


class BufferPool:
    """Hands out `memoryview`s of anonymous mmaps, sized up to a page multiple.

    `get(n)` returns a writable view of exactly `n` bytes starting on a page boundary;
    `put(view)` gives it back once nothing uses it any more. At most `retain` bytes of idle
    buffers are kept; beyond that, returned buffers are unmapped.
    """

    def __init__(self, retain: int = 64 * 1024 * 1024) -> None:
        self._free: defaultdict[int, list[mmap.mmap]] = defaultdict(list)
        self._idle = 0
        self._retain = retain
        self._lock = threading.Lock()  # put() runs on writer threads, get() on the loop

    def get(self, n: int) -> memoryview:
        size = max(PAGE, -(-n // PAGE) * PAGE)
        with self._lock:
            free = self._free[size]
            if free:
                self._idle -= size
                return memoryview(free.pop())[:n]
        return memoryview(mmap.mmap(-1, size))[:n]

    def put(self, view: memoryview) -> None:
        """Return a buffer from `get`; other buffers are ignored (they are freed as usual)."""
        owner = view.obj
        view.release()
        if not isinstance(owner, mmap.mmap):
            return
        size = len(owner)
        with self._lock:
            if self._idle + size <= self._retain:
                self._free[size].append(owner)
                self._idle += size
                return
        with contextlib.suppress(BufferError):  # still exported elsewhere: GC unmaps it later
            owner.close()

    @property
    def idle_bytes(self) -> int:
        return self._idle


#: The process's pool: chunk buffers are a process-wide resource, like memory itself.
POOL = BufferPool()


def is_page_aligned(view: memoryview) -> bool:
    """True if `view` is writable, contiguous and starts on a page boundary (O_DIRECT-able)."""
    if not isinstance(view, memoryview) or view.readonly or not view.contiguous or not view:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % PAGE == 0
