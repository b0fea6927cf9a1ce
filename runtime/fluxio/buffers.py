"""Page-aligned, recycled chunk buffers.

Received chunks are read straight into these, hashed, and written to disk with O_DIRECT (which
needs page-aligned memory). Reusing them keeps memory flat and avoids faulting in fresh pages
for every chunk: on these machines first-touch page faults cost as much as the copy itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import mmap
import threading
import weakref
from collections import defaultdict, deque
from collections.abc import Callable

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


class ReceiveBudget:
    """Bytes of received chunk buffers alive at once, with a limit readers can wait on.

    `alloc` is a Connection's buffer allocator (call it on the event loop): it hands out pool
    buffers and counts them until `release` gives them back, or the view it returned is
    collected (a buffer dropped on an error path is uncounted too).
    Over the limit, TCP channels stop reading (`exhausted`) until `when_available` calls them
    back. Only receive buffers count: a download's buffers wait for the client's acks, which a
    paused reader could not see.

    Views die on writer threads and inside garbage collections, where taking a lock or waking
    the loop could deadlock; their finalizers only append to a deque, and the loop looks at it
    (on every `in_use`, and every TICK seconds while someone waits).
    """

    TICK = 0.002

    def __init__(self, limit: int, pool: BufferPool = POOL) -> None:
        self.limit, self._pool = limit, pool
        self._allocated = self._released = 0
        self._freed: deque[int] = deque()  # appended by finalizers, any thread
        self._live: dict[int, weakref.finalize[[int, int], memoryview]] = {}
        self._waiters: list[Callable[[], None]] = []
        self._ticking = False

    def alloc(self, n: int) -> memoryview:
        view = self._pool.get(n)
        self._allocated += n
        key = id(view)
        self._live[key] = weakref.finalize(view, self._collected, key, n)
        return view

    def release(self, view: memoryview) -> None:
        """Give a buffer from `alloc` back to the pool; it stops counting now, even if a stale
        reference to the view lives on (a frame object in some local variable)."""
        fin = self._live.pop(id(view), None)
        if fin is not None and fin.detach() is not None:
            self._freed.append(len(view))
        self._pool.put(view)

    def _collected(self, key: int, n: int) -> None:
        self._live.pop(key, None)
        self._freed.append(n)

    @property
    def in_use(self) -> int:
        while self._freed:
            self._released += self._freed.popleft()
        return self._allocated - self._released

    @property
    def exhausted(self) -> bool:
        return self.in_use >= self.limit

    def when_available(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the running loop once usage is below the limit (maybe at once)."""
        loop = asyncio.get_running_loop()
        if not self.exhausted:
            loop.call_soon(callback)
            return
        self._waiters.append(callback)
        if not self._ticking:
            self._ticking = True
            loop.call_later(self.TICK, self._tick)

    def _tick(self) -> None:
        if self.exhausted:
            asyncio.get_running_loop().call_later(self.TICK, self._tick)
            return
        self._ticking = False
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()
