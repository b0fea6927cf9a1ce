"""Requests that attach to an open upload by `tid` (PROTOCOL.md 6.3), as a client's lanes do:
the subject's own only, the upload outliving the request that opened it while another drives
it, and each chunk's bytes counted once however many lanes delivered it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from service_support import Conn, Daemon, run, write
from test_local_storage import CS, chunks, content, ref

from fluxd.service import AttachedUpload, UploadHandle
from fluxproto import ConnectionLost, NotFound


def test_another_subject_cannot_attach_even_knowing_the_tid(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()

    async def main() -> None:
        async with d.service.upload(d.caller("alice"), "f", len(data), CS, 0o644) as up:
            assert isinstance(up, UploadHandle)
            for subject in ("bob", "mallory"):
                with pytest.raises(NotFound):
                    async with d.service.upload(
                        d.caller(subject), "f", len(data), CS, 0o644, attach=up.tid
                    ):
                        raise AssertionError("attached to another subject's upload")
            await write(up, chunks(data))
            await up.commit(ref(data))

    run(main())
    assert (d.root / "f").read_bytes() == data
    refused = [str(r["result"]) for r in d.records("upload") if r["subject"] != "alice"]
    assert len(refused) == 2 and all(r.startswith("error 404: no open transfer") for r in refused)


def test_the_upload_outlives_its_opener_while_a_lane_drives_it(make: Callable[..., Daemon]) -> None:
    """The lane that opened the upload dies; another lane of the same client goes on, a third
    (the first one, reconnected) attaches meanwhile, and either commits."""
    d = make()
    data = content()
    parts = chunks(data)
    tid: list[bytes] = []
    attached, leaving, wrote = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def opener() -> None:
        with pytest.raises(ConnectionLost):
            async with d.service.upload(d.caller(), "f", len(data), CS, 0o644) as up:
                assert isinstance(up, UploadHandle)
                tid.append(up.tid)
                await write(up, parts[:1])
                await attached.wait()
                leaving.set()
                raise ConnectionLost("the TCP lane was cut")

    async def lane(conn: Conn, batch: list[tuple[int, bytes, bytes]], commit: bool) -> None:
        async with d.service.upload(
            d.caller(conn=conn), "f", len(data), CS, 0o644, attach=tid[0]
        ) as up:
            assert isinstance(up, AttachedUpload)
            attached.set()
            await leaving.wait()
            await asyncio.sleep(0)  # the opener is on its way out now
            await write(up, batch)
            if commit:
                await wrote.wait()  # the other lane's chunk is durable too
                await up.commit(ref(data))
            else:
                wrote.set()

    async def main() -> None:
        first = asyncio.create_task(opener())
        while not tid:
            await asyncio.sleep(0)
        quic = asyncio.create_task(lane(Conn("127.0.0.1:40002"), parts[1:2], commit=False))
        await leaving.wait()
        # The opener is leaving and the QUIC lane still drives the upload: the TCP lane, back,
        # attaches again and finishes it.
        await lane(Conn("127.0.0.1:40003"), parts[2:], commit=True)
        await asyncio.gather(first, quic)

    run(main())
    assert (d.root / "f").read_bytes() == data
    records = d.records("upload")
    assert sum(int(r["bytes"]) for r in records) == len(data)


def test_a_chunk_two_lanes_delivered_is_counted_once(make: Callable[..., Daemon]) -> None:
    d = make()
    data = content()
    parts = chunks(data)

    async def main() -> None:
        async with d.service.upload(d.caller(), "f", len(data), CS, 0o644) as up:
            assert isinstance(up, UploadHandle)
            async with d.service.upload(
                d.caller(conn=Conn("127.0.0.1:40002")), "f", len(data), CS, 0o644, attach=up.tid
            ) as other:
                await write(up, parts[:2])
                await write(other, parts[1:])  # chunk 1 again: its first lane had stalled
                await other.commit(ref(data))

    run(main())
    assert (d.root / "f").read_bytes() == data
    assert sorted(int(r["bytes"]) for r in d.records("upload")) == [2 * CS, len(data) - 2 * CS]
    # The second request wrote chunk 1 again: its record says so, the opener's does not.
    assert sorted(r.get("resent", 0) for r in d.records("upload")) == [0, 1]
