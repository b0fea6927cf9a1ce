"""Hypothesis strategies for the fluxproto tests: a valid frame of every type, and mutations of
encoded frames for the fuzz properties."""

from __future__ import annotations

from hypothesis import strategies as st

from fluxproto import (
    Ack,
    Cancel,
    Chunk,
    Commit,
    Committed,
    Delete,
    Deleted,
    Done,
    Entries,
    Entry,
    Error,
    Frame,
    FrameType,
    Goodbye,
    Hello,
    Info,
    ListDir,
    Made,
    Meta,
    Mkdir,
    OpenDownload,
    OpenUpload,
    Ping,
    Pong,
    Stat,
    Status,
    Symlink,
    Welcome,
    encode_bytes,
)
from fluxproto.frames import (
    DIGEST_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_FILE_SIZE,
    MAX_I64,
    MAX_MODE,
    MAX_REQUESTS,
    MAX_RID,
    MAX_U32,
    MAX_U64,
    MAX_WINDOW,
    MIN_CHUNK,
    MIN_WINDOW,
)

# Example counts: enough to find shallow bugs, small enough for the < 30 s budget on 2 cores
# (`make fuzz` raises the fuzz count, see tests/fuzzing.py).
ROUNDTRIP_EXAMPLES = 200

u64 = st.integers(0, MAX_U64)
rids = st.one_of(st.sampled_from([1, 2, MAX_RID]), st.integers(1, MAX_RID))
digests16 = st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
tids = digests16
modes = st.integers(0, MAX_MODE)
mtimes = st.integers(0, MAX_I64)
chunk_sizes = st.one_of(
    st.sampled_from([MIN_CHUNK, 64 * 1024, 1 << 20, MAX_CHUNK]),
    st.integers(MIN_CHUNK, MAX_CHUNK),
)
windows = st.one_of(st.sampled_from([MIN_WINDOW, MAX_WINDOW]), st.integers(MIN_WINDOW, MAX_WINDOW))


def texts(max_bytes: int, *, min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    """Valid UTF-8 text (no lone surrogates) of at most `max_bytes` encoded bytes."""
    return st.text(st.characters(codec="utf-8"), min_size=min_size, max_size=max_size).filter(
        lambda s: len(s.encode()) <= max_bytes
    )


paths = texts(4096, min_size=1)


@st.composite
def canonical_ranges(
    draw: st.DrawFn,
    limit: int = MAX_CHUNKS,
    *,
    min_ranges: int = 0,
    max_ranges: int = 6,
    max_count: int = 12,
) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-adjacent (start, count) runs ending at or below `limit`."""
    n = draw(st.integers(min_ranges, max_ranges))
    out: list[tuple[int, int]] = []
    pos = 0
    gaps = st.one_of(st.integers(0, 4), st.integers(0, MAX_CHUNKS // 8))
    for _ in range(n):
        start = pos + draw(gaps) + (1 if out else 0)
        cnt = draw(st.integers(1, max_count))
        if start + cnt > limit:
            break
        out.append((start, cnt))
        pos = start + cnt
    if len(out) < min_ranges:
        out = [(0, 1)]  # every caller with min_ranges=1 has limit >= 1
    return tuple(out)


@st.composite
def small_geometry(draw: st.DrawFn, max_chunks: int = 6) -> tuple[int, int, int]:
    """(size, chunk_size, nchunks) with few chunks, so digest payloads stay small."""
    chunk_size = draw(chunk_sizes)
    n = draw(st.integers(0, max_chunks))
    size = 0 if n == 0 else draw(st.integers((n - 1) * chunk_size + 1, n * chunk_size))
    return size, chunk_size, n


@st.composite
def limits(draw: st.DrawFn) -> dict[str, int | None]:
    """window, transfer_window (None or at most window) and requests, as HELLO/WELCOME carry."""
    window = draw(windows)
    tw = draw(st.none() | st.integers(MIN_WINDOW, window))
    return {"window": window, "transfer_window": tw, "requests": draw(st.integers(1, MAX_REQUESTS))}


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    return Hello(
        versions=tuple(draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16))),
        caps=tuple(draw(st.lists(texts(64), max_size=8))),
        agent=draw(texts(1024)),
        token=draw(st.none() | texts(8192)),
        **draw(limits()),
    )


@st.composite
def welcomes(draw: st.DrawFn) -> Welcome:
    return Welcome(
        version=draw(st.integers(0, 0xFFFF)),
        caps=tuple(draw(st.lists(texts(64), max_size=8))),
        agent=draw(texts(1024)),
        **draw(limits()),
        min_chunk=draw(st.sampled_from([MIN_CHUNK, 5 << 20, MAX_CHUNK]) | chunk_sizes),
        max_chunks=draw(st.sampled_from([1, 10_000, MAX_CHUNKS]) | st.integers(1, MAX_CHUNKS)),
    )


@st.composite
def open_uploads(draw: st.DrawFn) -> OpenUpload:
    chunk_size = draw(chunk_sizes)
    size = draw(st.integers(0, min(MAX_FILE_SIZE, chunk_size * MAX_CHUNKS)))
    return OpenUpload(
        draw(rids),
        draw(paths),
        size,
        chunk_size,
        draw(modes),
        draw(st.none() | mtimes),
        draw(st.none() | tids),
    )


@st.composite
def statuses(draw: st.DrawFn) -> Status:
    held = draw(canonical_ranges())
    n = sum(c for _, c in held)
    return Status(draw(rids), draw(tids), held, draw(st.binary(min_size=16 * n, max_size=16 * n)))


@st.composite
def metas(draw: st.DrawFn) -> Meta:
    size, chunk_size, n = draw(small_geometry())
    return Meta(
        draw(rids),
        draw(tids),
        size,
        chunk_size,
        draw(digests16),
        draw(st.integers(0, n)),
        draw(modes),
        draw(mtimes),
        draw(st.booleans()),
        draw(st.binary(min_size=16 * n, max_size=16 * n)),
    )


@st.composite
def entries(draw: st.DrawFn, kinds: tuple[str, ...] = ("file", "dir", "link")) -> Entry:
    kind = draw(st.sampled_from(kinds))
    return Entry(
        draw(texts(4096, min_size=1)),
        kind,
        draw(u64),
        draw(mtimes),
        draw(modes),
        draw(st.none() | digests16),
        draw(texts(4096, min_size=1)) if kind == "link" else None,
    )


FRAME_STRATEGIES: dict[FrameType, st.SearchStrategy[Frame]] = {
    FrameType.HELLO: hellos(),
    FrameType.WELCOME: welcomes(),
    FrameType.PING: st.builds(Ping, nonce=u64),
    FrameType.PONG: st.builds(Pong, nonce=u64),
    FrameType.GOODBYE: st.builds(Goodbye, reason=texts(1024)),
    FrameType.ERROR: st.builds(
        Error, code=st.integers(100, 999), message=texts(1024), rid=st.none() | rids
    ),
    FrameType.CANCEL: st.builds(Cancel, rid=rids),
    FrameType.OPEN_UPLOAD: open_uploads(),
    FrameType.STATUS: statuses(),
    FrameType.CHUNK: st.builds(
        Chunk,
        rid=rids,
        index=st.integers(0, MAX_CHUNKS - 1),
        digest=digests16,
        data=st.binary(max_size=300),
    ),
    FrameType.ACK: st.builds(Ack, rid=rids, ranges=canonical_ranges(min_ranges=1)),
    FrameType.COMMIT: st.builds(Commit, rid=rids, digest=digests16, sent=st.integers(0, MAX_U32)),
    FrameType.COMMITTED: st.builds(
        Committed, rid=rids, size=st.integers(0, MAX_FILE_SIZE), digest=digests16
    ),
    FrameType.OPEN_DOWNLOAD: st.builds(
        OpenDownload,
        rid=rids,
        path=paths,
        want=st.none() | canonical_ranges(),
        digest=st.none() | digests16,
        chunk_size=chunk_sizes,
        attach=st.none() | tids,
        share=st.booleans(),
    ),
    FrameType.META: metas(),
    FrameType.DONE: st.builds(Done, rid=rids),
    FrameType.LIST: st.builds(
        ListDir, rid=rids, path=paths, recursive=st.booleans(), digests=st.booleans()
    ),
    FrameType.ENTRIES: st.builds(
        Entries,
        rid=rids,
        entries=st.lists(entries(), max_size=4).map(tuple),
        done=st.booleans(),
    ),
    FrameType.STAT: st.builds(Stat, rid=rids, path=paths),
    FrameType.INFO: st.builds(Info, rid=rids, entry=entries()),
    FrameType.DELETE: st.builds(Delete, rid=rids, path=paths, recursive=st.booleans()),
    FrameType.DELETED: st.builds(Deleted, rid=rids, path=paths, count=u64),
    FrameType.MKDIR: st.builds(
        Mkdir,
        rid=rids,
        path=paths,
        mode=st.none() | modes,
        mtime_ns=st.none() | mtimes,
        parents=st.booleans(),
    ),
    FrameType.SYMLINK: st.builds(
        Symlink,
        rid=rids,
        path=paths,
        target=texts(4096, min_size=1),
        mtime_ns=st.none() | mtimes,
    ),
    FrameType.MADE: st.builds(Made, rid=rids, entry=entries()),
}

any_frame: st.SearchStrategy[Frame] = st.one_of(*FRAME_STRATEGIES.values())

fuzz_frame: st.SearchStrategy[Frame] = any_frame


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one to four mutations: bit flips, byte sets, truncation, insertion, deletion,
    a rewritten type byte or length field (at a frame start found in the first prefix)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "len", "type"]))
        if not buf:
            buf += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buf[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[i : i + draw(st.integers(1, 16))]
        elif op == "type":
            buf[0] = draw(st.integers(0, 255))
        elif len(buf) >= 9:
            at = draw(st.sampled_from([1, 5]))  # header_len or payload_len of the first frame
            old = int.from_bytes(buf[at : at + 4], "big")
            new = draw(
                st.one_of(
                    st.integers(max(0, old - 16), old + 16),
                    st.integers(0, 0xFFFFFFFF),
                )
            )
            buf[at : at + 4] = min(new, 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(buf)


@st.composite
def mutated_frames(draw: st.DrawFn, corpus: st.SearchStrategy[Frame] = fuzz_frame) -> bytes:
    frames = draw(st.lists(corpus, min_size=1, max_size=3))
    return draw(mutated(b"".join(encode_bytes(f) for f in frames)))
