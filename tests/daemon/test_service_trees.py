"""fluxd.service for trees (issue 12), without a network: mkdir, symlink, recursive list and
delete, uploads with an mtime, and grouped uploads committed together, each with its scope and
its one access record."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from service_support import Daemon, run, send
from test_local_storage import CS, chunks, content, put, ref

from fluxd.auth.scopes import subject_root
from fluxd.config import AuthConfig, Limits
from fluxd.service import Caller
from fluxproto import Conflict, IntegrityError, LimitExceeded, PermissionDenied

MTIME = 1_600_000_000_987_654_321


def refused(d: Daemon, opened: Callable[[], Any]) -> dict[str, Any]:
    """Enter an operation that must be refused; its access record."""

    async def main() -> None:
        async with opened():
            raise AssertionError("must be refused")

    with pytest.raises(PermissionDenied):
        run(main())
    return d.records()[-1]


# --- mkdir and symlink ---------------------------------------------------------------------------


def test_mkdir_and_symlink_are_recorded(make: Callable[..., Daemon]) -> None:
    d = make()

    async def main() -> None:
        async with d.service.mkdir(d.caller(), "/a/b", 0o750, MTIME) as entry:
            assert (entry.name, entry.kind, entry.mode, entry.mtime_ns) == (
                "b",
                "dir",
                0o750,
                MTIME,
            )
        async with d.service.symlink(d.caller(), "/a/l", "b", MTIME + 1) as entry:
            assert (entry.kind, entry.target, entry.mtime_ns) == ("link", "b", MTIME + 1)

    run(main())
    assert os.readlink(d.root / "a" / "l") == "b"
    assert os.lstat(d.root / "a" / "l").st_mtime_ns == MTIME + 1
    assert os.stat(d.root / "a" / "b").st_mtime_ns == MTIME, "the link's target is not touched"
    assert [(r["op"], r["path"], r["result"]) for r in d.records()] == [
        ("mkdir", "/a/b", "ok"),
        ("symlink", "/a/l", "ok"),
    ]


@pytest.mark.parametrize("op", ["mkdir", "symlink"])
def test_mkdir_and_symlink_need_write(make: Callable[..., Daemon], op: str) -> None:
    d = make()
    caller = d.caller(scopes="read:/ list:/ delete:/ write:/other/")
    opened = {
        "mkdir": lambda: d.service.mkdir(caller, "/d"),
        "symlink": lambda: d.service.symlink(caller, "/l", "x"),
    }[op]
    record = refused(d, opened)
    assert (record["op"], record["result"][:9]) == (op, "error 403")
    assert not os.path.lexists(d.root / ("d" if op == "mkdir" else "l"))


def test_a_confined_subjects_link_stays_in_its_root(make: Callable[..., Daemon]) -> None:
    d = make(auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))

    async def main() -> None:
        async with d.service.mkdir(alice, "/") as entry:
            assert (entry.name, entry.kind) == ("/", "dir"), "its root, named as it sees it"
        async with d.service.symlink(alice, "/docs/l", "../x"):
            pass

    run(main())
    assert os.readlink(d.root / "users" / "alice" / "docs" / "l") == "../x"
    record = refused(d, lambda: d.service.symlink(alice, "/l", "../bob/secret"))
    assert "leads out of the root" in record["result"]


# --- recursive list ------------------------------------------------------------------------------


async def walk(d: Daemon, caller: Caller, path: str, page: int = 1000) -> list[tuple[int, bool]]:
    shapes = []
    async with d.service.walk(caller, path, page) as pages:
        async for entries, last in pages:
            shapes.append((len(entries), last))
    return shapes


def test_a_recursive_list_streams_pages(make: Callable[..., Daemon]) -> None:
    d = make()
    for i in range(5):
        put(d.storage, f"t/d{i}/f", content(CS))
    assert run(walk(d, d.caller(scopes="list:/"), "/t", page=4)) == [
        (4, False),
        (4, False),
        (2, True),
    ]
    assert run(walk(d, d.caller(), "/t", page=10)) == [(10, True)]
    first, second = d.records("list")
    assert (first["recursive"], first["count"], first["result"]) == (True, 10, "ok")
    assert second["count"] == 10


def test_a_list_carries_digests_and_says_so_only_when_asked(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "t/f", content(CS))

    async def main(digests: bool) -> list[bytes | None]:
        found = []
        async with d.service.walk(d.caller(), "/t", digests=digests) as pages:
            found += [e.digest async for page, _ in pages for e in page]
        async with d.service.list(d.caller(), "/t", None, 10, digests) as (entries, _):
            found += [e.digest for e in entries]
        return found

    assert run(main(False)) == [None, None]
    assert run(main(True)) == [ref(content(CS))] * 2
    records = d.records("list")
    assert ["digests" in r for r in records] == [False, False, True, True]
    assert [r.get("recursive") for r in records] == [True, None, True, None]
    assert all(r["digests"] is True for r in records[2:])


def test_a_recursive_list_needs_list_and_stops_at_the_limit(make: Callable[..., Daemon]) -> None:
    d = make(limits=Limits(tree_entries=3))
    for i in range(5):
        put(d.storage, f"t/f{i}", content(CS))
    record = refused(d, lambda: d.service.walk(d.caller(scopes="read:/ write:/"), "/t"))
    assert (record["op"], record["recursive"], record["result"][:9]) == ("list", True, "error 403")
    with pytest.raises(LimitExceeded, match="more than 3 entries"):
        run(walk(d, d.caller(), "/t"))
    assert d.records()[-1]["result"].startswith("error 413: /t holds more than 3 entries")


def test_a_confined_subject_walks_its_root_before_it_exists(make: Callable[..., Daemon]) -> None:
    d = make(auth=AuthConfig(root="/users/{sub}"))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    assert run(walk(d, alice, "/")) == [(0, True)]


# --- recursive delete ----------------------------------------------------------------------------


def test_a_recursive_delete_counts_and_is_recorded(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "t/a/f", content(CS))
    put(d.storage, "t/g", content(CS))

    async def main() -> int:
        async with d.service.delete(d.caller(scopes="delete:/t/"), "/t", recursive=True) as n:
            return n

    assert run(main()) == 4
    assert not (d.root / "t").exists()
    [record] = d.records("delete")
    assert (record["recursive"], record["count"], record["result"]) == (True, 4, "ok")


def test_a_recursive_delete_needs_delete_on_the_folder(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "t/f", content(CS))
    record = refused(d, lambda: d.service.delete(d.caller(scopes="delete:/t/f"), "/t", True))
    assert record["result"].startswith("error 403: token of 'alice' does not allow delete on /t")
    assert (d.root / "t" / "f").exists()


def test_a_recursive_delete_refuses_roots(make: Callable[..., Daemon]) -> None:
    d = make(auth=AuthConfig(root="/users/{sub}"))
    put(d.storage, "users/alice/f", content(CS))
    alice = d.caller(root=subject_root("/users/{sub}", "alice"))
    record = refused(d, lambda: d.service.delete(alice, "/", recursive=True))
    assert record["result"] == "error 403: refusing to delete your root /"
    record = refused(d, lambda: d.service.delete(d.caller(), "/", recursive=True))
    assert record["result"] == "error 403: refusing to delete /"
    assert (d.root / "users" / "alice" / "f").exists()


def test_a_plain_delete_of_a_folder_is_a_conflict(make: Callable[..., Daemon]) -> None:
    d = make()
    put(d.storage, "t/f", content(CS))

    async def main() -> None:
        async with d.service.delete(d.caller(), "/t"):
            pass

    with pytest.raises(Conflict):
        run(main())
    assert "recursive" not in d.records("delete")[0]


# --- uploads with an mtime, grouped ------------------------------------------------------------


def test_an_upload_sets_the_mtime(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644, MTIME) as up:
            await asyncio.get_running_loop().run_in_executor(up.pool, up.write_chunks, chunks(data))
            await up.commit(ref(data))

    run(main())
    assert (d.root / "f").stat().st_mtime_ns == MTIME


async def grouped_upload(
    d: Daemon, path: str, data: bytes, digest: bytes, ready: asyncio.Barrier | None = None
) -> None:
    """A small file as a v2 session would take it: chunks kept for the commit, committed with
    whatever else commits at the same time."""
    async with d.service.upload(d.caller(), path, len(data), CS, 0o644, MTIME, grouped=True) as up:
        batch = chunks(data)
        await asyncio.get_running_loop().run_in_executor(up.pool, up.write_chunks, batch, False)
        if ready is not None:
            await ready.wait()
        await up.commit(digest)


def test_grouped_uploads_share_one_commit_and_keep_their_records(
    make: Callable[..., Daemon],
) -> None:
    d = make()
    files = {f"g/f{i}": content(100 + i, seed=i) for i in range(8)}

    async def main() -> list[BaseException | None]:
        ready = asyncio.Barrier(len(files) + 1)
        bad = content(50, seed=99)
        tasks = [
            asyncio.create_task(grouped_upload(d, p, b, ref(b), ready)) for p, b in files.items()
        ]
        tasks.append(asyncio.create_task(grouped_upload(d, "g/bad", bad, ref(b"no"), ready)))
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert results[:-1] == [None] * 8
    assert isinstance(results[-1], IntegrityError)
    assert d.service.group.groups == 1 and d.service.group.uploads == 9, "one barrier for all"
    for path, data in files.items():
        assert (d.root / path).read_bytes() == data
        assert (d.root / path).stat().st_mtime_ns == MTIME
    records = {r["path"]: r for r in d.records("upload")}
    assert len(records) == 9
    assert records["g/f3"]["result"] == "ok" and records["g/f3"]["bytes"] == 103
    assert records["g/bad"]["result"].startswith("error 422")
    assert records["g/bad"]["bytes"] == 0, "nothing durable was stored for it"


def test_commit_many_returns_each_uploads_outcome(make: Callable[..., Daemon]) -> None:
    d = make()
    good, bad = content(100, seed=1), content(100, seed=2)

    async def main() -> list[Any]:
        caller = d.caller()
        async with (
            d.service.upload(caller, "a", len(good), CS, 0o644, grouped=True) as a,
            d.service.upload(caller, "b", len(bad), CS, 0o644, grouped=True) as b,
        ):
            for up, data in ((a, good), (b, bad)):
                up.write_chunks(chunks(data), durable=False)
            results = await d.service.commit_many([(a, ref(good)), (b, ref(b"x"))])
            assert (a.committed, b.committed) == (True, False)
            return results

    first, second = run(main())
    assert first is None and isinstance(second, IntegrityError)
    assert (d.root / "a").read_bytes() == good and not (d.root / "b").exists()
    assert d.service.group.groups == 1


def test_a_grouped_upload_can_be_sent_the_usual_way(make: Callable[..., Daemon]) -> None:
    """Durable writes to a grouped upload stage it: it then resumes like any other."""
    d = make()
    data = content()

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644, grouped=True) as up:
            up.write_chunks(chunks(data)[:2])

    run(main())
    run(send(d, d.caller(), "f", data))
    assert [r["bytes"] for r in d.records("upload")] == [2 * CS, len(data) - 2 * CS]
