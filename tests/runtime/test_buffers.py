"""fluxio.buffers: page-aligned, recycled chunk buffers."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import mmap
import threading

import pytest

from fluxio.buffers import PAGE, POOL, BufferPool, ReceiveBudget, is_page_aligned


def address(view: memoryview) -> int:
    """The memory address `view` starts at (the view must be writable and non-empty)."""
    c = ctypes.c_char.from_buffer(view)
    addr = ctypes.addressof(c)
    del c  # drop the export, or the pool could not release the view
    return addr


def owner(view: memoryview) -> mmap.mmap:
    obj = view.obj
    assert isinstance(obj, mmap.mmap)
    return obj


def test_page_is_the_system_page_size() -> None:
    assert PAGE == mmap.PAGESIZE
    assert PAGE > 0 and PAGE & (PAGE - 1) == 0


@pytest.mark.parametrize("n", [1, 100, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 5, 1 << 20])
def test_get_returns_exactly_n_writable_page_aligned_bytes(n: int) -> None:
    pool = BufferPool()
    view = pool.get(n)
    assert len(view) == n
    assert view.nbytes == n
    assert not view.readonly
    assert view.contiguous and view.itemsize == 1
    assert address(view) % PAGE == 0
    assert len(owner(view)) == -(-n // PAGE) * PAGE  # rounded up to whole pages
    pattern = bytes(i % 251 for i in range(n))
    view[:] = pattern
    assert bytes(view) == pattern
    assert is_page_aligned(view)


def test_get_zero_bytes_still_maps_a_page() -> None:
    pool = BufferPool()
    view = pool.get(0)
    assert len(view) == 0
    assert len(owner(view)) == PAGE


def test_put_then_get_recycles_the_same_mapping() -> None:
    pool = BufferPool()
    first = pool.get(PAGE + 10)
    mm = owner(first)
    pool.put(first)
    assert pool.idle_bytes == 2 * PAGE
    with pytest.raises(ValueError, match="released"):
        len(first)  # put() released the caller's view
    # Any request that rounds to the same number of pages gets the same mapping back.
    again = pool.get(2 * PAGE)
    assert owner(again) is mm
    assert len(again) == 2 * PAGE
    assert pool.idle_bytes == 0
    assert address(again) % PAGE == 0


def test_different_sizes_use_different_mappings() -> None:
    pool = BufferPool()
    small = pool.get(PAGE)
    small_mm = owner(small)
    pool.put(small)
    big = pool.get(4 * PAGE)
    assert owner(big) is not small_mm
    assert pool.idle_bytes == PAGE  # the small one is still waiting
    assert owner(pool.get(1)) is small_mm


def test_recycling_is_lifo_per_size() -> None:
    pool = BufferPool()
    a, b = pool.get(PAGE), pool.get(PAGE)
    mm_a, mm_b = owner(a), owner(b)
    pool.put(a)
    pool.put(b)
    assert owner(pool.get(PAGE)) is mm_b
    assert owner(pool.get(PAGE)) is mm_a
    assert pool.idle_bytes == 0


def test_retain_cap_keeps_idle_bytes_under_it() -> None:
    pool = BufferPool(retain=2 * PAGE)
    views = [pool.get(PAGE) for _ in range(3)]
    maps = [owner(v) for v in views]
    for v in views:
        pool.put(v)
        assert pool.idle_bytes <= 2 * PAGE
    assert pool.idle_bytes == 2 * PAGE
    assert [m.closed for m in maps] == [False, False, True]  # the extra one was unmapped
    got = {id(owner(pool.get(PAGE))) for _ in range(2)}
    assert got == {id(maps[0]), id(maps[1])}


def test_buffer_larger_than_retain_is_dropped() -> None:
    pool = BufferPool(retain=PAGE)
    view = pool.get(2 * PAGE)
    mm = owner(view)
    pool.put(view)
    assert pool.idle_bytes == 0
    assert mm.closed


def test_retain_zero_keeps_nothing() -> None:
    pool = BufferPool(retain=0)
    view = pool.get(10)
    mm = owner(view)
    pool.put(view)
    assert pool.idle_bytes == 0
    assert mm.closed
    assert owner(pool.get(10)) is not mm


def test_dropping_a_buffer_still_exported_elsewhere_does_not_raise() -> None:
    pool = BufferPool(retain=0)
    view = pool.get(PAGE)
    mm = owner(view)
    other = memoryview(mm)  # someone still reads it
    pool.put(view)
    assert not mm.closed  # left for the GC instead of failing
    other[0] = 7
    assert mm[0] == 7
    other.release()


@pytest.mark.parametrize(
    "make",
    [
        lambda: memoryview(bytearray(PAGE)),
        lambda: memoryview(b"x" * PAGE),
        lambda: memoryview(bytearray(100))[10:20],
    ],
)
def test_put_ignores_buffers_the_pool_did_not_make(make: object) -> None:
    pool = BufferPool()
    view = make()  # type: ignore[operator]
    pool.put(view)
    assert pool.idle_bytes == 0
    with pytest.raises(ValueError, match="released"):
        len(view)
    fresh = pool.get(PAGE)
    assert isinstance(fresh.obj, mmap.mmap)


def test_is_page_aligned() -> None:
    pool = BufferPool()
    assert is_page_aligned(pool.get(PAGE))
    assert not is_page_aligned(memoryview(bytearray(PAGE)))
    assert not is_page_aligned(memoryview(bytes(PAGE)))
    assert not is_page_aligned(b"x" * PAGE)  # type: ignore[arg-type]


def test_is_page_aligned_checks_the_start_address() -> None:
    view = BufferPool().get(2 * PAGE)[1:]
    assert address(view) % PAGE != 0
    assert not is_page_aligned(view)


def test_process_pool_is_a_buffer_pool() -> None:
    assert isinstance(POOL, BufferPool)
    view = POOL.get(5)
    assert len(view) == 5 and is_page_aligned(view)
    POOL.put(view)


def test_two_threads_share_a_pool_consistently() -> None:
    pool = BufferPool(retain=8 * PAGE)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            start.wait()
            for i in range(2000):
                view = pool.get(PAGE * (1 + i % 2))
                view[0] = 1
                pool.put(view)
                assert pool.idle_bytes <= 8 * PAGE
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    idle = pool.idle_bytes
    assert 0 < idle <= 8 * PAGE
    # The counter matches what the free lists hold: taking back every idle buffer brings it to 0.
    for size in (PAGE, 2 * PAGE):
        while True:
            before = pool.idle_bytes
            pool.get(size)
            if pool.idle_bytes != before - size:
                assert pool.idle_bytes == before  # a fresh mapping: this size class is empty
                break
    assert pool.idle_bytes == 0


# --- ReceiveBudget ------------------------------------------------------------------------------


def test_budget_counts_live_views_and_forgets_them_when_they_die() -> None:
    budget = ReceiveBudget(3 * PAGE)
    views = [budget.alloc(PAGE) for _ in range(2)]
    assert budget.in_use == 2 * PAGE and not budget.exhausted
    views.append(budget.alloc(PAGE))
    assert budget.exhausted
    for v in views:
        POOL.put(v)
    del v, views
    gc.collect()
    assert budget.in_use == 0


def test_release_uncounts_at_once_even_if_a_stale_reference_lives_on() -> None:
    budget = ReceiveBudget(PAGE)
    view = budget.alloc(PAGE)
    stale = view  # e.g. a Chunk frame still bound to a local variable
    budget.release(view)
    assert budget.in_use == 0 and not budget.exhausted
    del view, stale
    gc.collect()
    assert budget.in_use == 0, "collected after release: not uncounted twice"


def test_a_view_dropped_without_put_is_uncounted_too() -> None:
    budget = ReceiveBudget(PAGE)
    view = budget.alloc(100)
    assert budget.in_use == 100
    del view
    gc.collect()
    assert budget.in_use == 0


def test_waiters_are_called_once_usage_is_below_the_limit() -> None:
    async def scenario() -> list[str]:
        budget = ReceiveBudget(PAGE)
        calls: list[str] = []
        done = asyncio.Event()
        budget.when_available(lambda: calls.append("at once"))
        view = budget.alloc(PAGE)
        budget.when_available(lambda: (calls.append("later"), done.set()))
        await asyncio.sleep(0)
        assert calls == ["at once"]  # still exhausted: the second waits
        del view
        gc.collect()
        await asyncio.wait_for(done.wait(), 5)
        return calls

    assert asyncio.run(scenario()) == ["at once", "later"]
