"""IndexSet: chunk indices as a bitmap."""

from __future__ import annotations

from fluxd.service.indexset import IndexSet


def test_each_index_is_new_once() -> None:
    seen = IndexSet()
    assert [seen.add(i) for i in (0, 9, 7, 9, 0, 1000, 8)] == [True] * 3 + [False] * 2 + [True] * 2
