"""fluxctl.results: the chunk size a send uses and the `--json` result object."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxctl.results import DEFAULT_CHUNK, TransferResult, chunk_size_for
from fluxproto import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    ConfigError,
    LimitExceeded,
    OpenUpload,
    Welcome,
    chunk_count,
)
from fluxproto.frames import MAX_FILE_SIZE

MiB = 1 << 20

# --- chunk_size_for: automatic ------------------------------------------------------------------


def test_default_is_4_mib() -> None:
    assert 4 * MiB == DEFAULT_CHUNK
    for size in (0, 1, DEFAULT_CHUNK, 10 * DEFAULT_CHUNK + 1, 1 << 40):
        assert chunk_size_for(size, None) == DEFAULT_CHUNK


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (MAX_CHUNKS * DEFAULT_CHUNK, DEFAULT_CHUNK),  # exactly at the limit: still 4 MiB
        (MAX_CHUNKS * DEFAULT_CHUNK + 1, 2 * DEFAULT_CHUNK),
        (MAX_CHUNKS * 2 * DEFAULT_CHUNK, 2 * DEFAULT_CHUNK),
        (MAX_CHUNKS * 2 * DEFAULT_CHUNK + 1, 4 * DEFAULT_CHUNK),
        (MAX_FILE_SIZE, MAX_CHUNK),
    ],
)
def test_doubles_past_the_chunk_count_limit(size: int, chunk: int) -> None:
    assert chunk_size_for(size, None) == chunk


def test_largest_file_fits_the_protocol() -> None:
    chunk = chunk_size_for(MAX_FILE_SIZE, None)
    assert chunk <= MAX_CHUNK
    assert chunk_count(MAX_FILE_SIZE, chunk) == MAX_CHUNKS
    OpenUpload(1, "/big", MAX_FILE_SIZE, chunk)  # the frame validates the geometry


@pytest.mark.parametrize("size", [MAX_FILE_SIZE + 1, 2 * MAX_FILE_SIZE])
def test_a_file_beyond_the_protocol_is_a_config_error(size: int) -> None:
    with pytest.raises(ConfigError, match="larger than the protocol allows"):
        chunk_size_for(size, None)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX_FILE_SIZE))
def test_smallest_power_of_two_multiple_that_fits(size: int) -> None:
    chunk = chunk_size_for(size, None)
    assert MIN_CHUNK <= DEFAULT_CHUNK <= chunk <= MAX_CHUNK
    assert chunk % DEFAULT_CHUNK == 0
    assert (chunk // DEFAULT_CHUNK).bit_count() == 1
    assert chunk_count(size, chunk) <= MAX_CHUNKS
    if chunk > DEFAULT_CHUNK:
        assert chunk_count(size, chunk // 2) > MAX_CHUNKS, "not the smallest that fits"
    OpenUpload(1, "/f", size, chunk)


# --- chunk_size_for: --chunk-size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "requested"),
    [
        (0, MIN_CHUNK),
        (10 * MiB, 64 * 1024),
        (1 << 40, MAX_CHUNK),
        (MAX_CHUNKS * MIN_CHUNK, MIN_CHUNK),
    ],
)
def test_requested_size_is_used_as_is(size: int, requested: int) -> None:
    assert chunk_size_for(size, requested) == requested


@pytest.mark.parametrize(
    ("size", "requested"),
    [
        (MAX_CHUNKS * MIN_CHUNK + 1, MIN_CHUNK),
        (MAX_CHUNKS * DEFAULT_CHUNK + 1, DEFAULT_CHUNK),
        (MAX_FILE_SIZE, MAX_CHUNK // 2),
    ],
)
def test_requested_size_too_small_names_one_that_works(size: int, requested: int) -> None:
    with pytest.raises(ConfigError, match="--chunk-size is too small") as info:
        chunk_size_for(size, requested)
    need = int(str(info.value).rsplit(" ", 1)[1])
    assert need > requested
    assert chunk_size_for(size, need) == need  # the suggestion is accepted
    assert chunk_count(size, need) <= MAX_CHUNKS < chunk_count(size, need - 1)


# --- chunk_size_for: the server's rule (WELCOME min_chunk, max_chunks) ----------------------------

S3 = Welcome(min_chunk=5 * MiB, max_chunks=10_000)


@pytest.mark.parametrize(
    ("size", "rule", "chunk"),
    [
        (0, S3, DEFAULT_CHUNK),  # no chunk: nothing to keep
        (3 * MiB, S3, DEFAULT_CHUNK),  # one chunk may be smaller than min_chunk
        (DEFAULT_CHUNK, S3, DEFAULT_CHUNK),
        (DEFAULT_CHUNK + 1, S3, 8 * MiB),  # two chunks of 4 MiB: below 5 MiB
        (10 * MiB, S3, 8 * MiB),
        (10_000 * 8 * MiB, S3, 8 * MiB),  # exactly 10,000 parts
        (10_000 * 8 * MiB + 1, S3, 16 * MiB),
        (10_000 * 16 * MiB, S3, 16 * MiB),
        (10 * MiB, Welcome(min_chunk=MAX_CHUNK), MAX_CHUNK),
        (10 * MiB, Welcome(max_chunks=1), 16 * MiB),
        (10 * MiB, Welcome(), DEFAULT_CHUNK),  # no rule: the protocol's limits
    ],
)
def test_the_servers_rule_is_kept(size: int, rule: Welcome, chunk: int) -> None:
    assert chunk_size_for(size, None, rule) == chunk


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 10_000 * MAX_CHUNK),
    st.integers(MIN_CHUNK, MAX_CHUNK),
    st.integers(1, MAX_CHUNKS),
)
def test_a_chunk_size_picked_under_a_rule_keeps_it(size: int, least: int, most: int) -> None:
    rule = Welcome(min_chunk=least, max_chunks=most)
    try:
        chunk = chunk_size_for(size, None, rule)
    except LimitExceeded:
        assert chunk_count(size, MAX_CHUNK) > most  # no size within the protocol would do
        return
    count = chunk_count(size, chunk)
    assert count <= most and (count <= 1 or chunk >= least)
    assert (chunk // DEFAULT_CHUNK).bit_count() == 1 and chunk <= MAX_CHUNK
    if chunk > DEFAULT_CHUNK:  # the smallest doubling that keeps the rule
        half = chunk // 2
        halves = chunk_count(size, half)
        assert halves > most or (halves > 1 and half < least)


def test_a_file_too_large_for_the_servers_rule_is_refused() -> None:
    size = 10_000 * MAX_CHUNK + 1
    with pytest.raises(LimitExceeded, match="too large for this server") as info:
        chunk_size_for(size, None, S3)
    assert info.value.exit_code == 6
    assert "\n" not in str(info.value)
    assert chunk_size_for(size, None) == DEFAULT_CHUNK  # a server without the rule takes it


@pytest.mark.parametrize(
    ("size", "requested", "match"),
    [
        (10 * MiB, 4 * MiB, "--chunk-size 4194304 is below 5242880, the least the server's"),
        (10 * MiB, MIN_CHUNK, "use at least 5242880"),
        (10_000 * 8 * MiB + 1, 8 * MiB, "--chunk-size is too small .* use at least 8388609"),
    ],
)
def test_a_requested_size_breaking_the_servers_rule_is_a_usage_error(
    size: int, requested: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        chunk_size_for(size, requested, S3)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("size", "requested"), [(3 * MiB, 4 * MiB), (5 * MiB, MIN_CHUNK * 1280), (11 * MiB, 6 * MiB)]
)
def test_a_requested_size_keeping_the_servers_rule_is_used(size: int, requested: int) -> None:
    assert chunk_size_for(size, requested, S3) == requested


# --- TransferResult.to_json ---------------------------------------------------------------------

DIGEST = bytes(range(16))


def result(op: str, **kw: object) -> TransferResult:
    fields: dict[str, object] = {
        "op": op,
        "path": "/dir/f.bin",
        "size": 1000,
        "moved": 600,
        "skipped": 400,
        "retries": 2,
        "seconds": 1.23456789,
        "digest": DIGEST,
    }
    fields.update(kw)
    return TransferResult(**fields)  # type: ignore[arg-type]


def test_send_json() -> None:
    assert result("send").to_json() == {
        "ok": True,
        "op": "send",
        "path": "/dir/f.bin",
        "bytes": 1000,
        "sent": 600,
        "skipped": 400,
        "retries": 2,
        "seconds": 1.234568,
        "digest": "xxh128:000102030405060708090a0b0c0d0e0f",
        "transport": "tcp",
        "lanes": {},
    }


def test_recv_json_reports_received_not_sent() -> None:
    out = result("recv").to_json()
    assert out["op"] == "recv"
    assert out["received"] == 600
    assert "sent" not in out
    send = result("send").to_json()
    assert "received" not in send
    assert set(out) - {"received"} == set(send) - {"sent"}


def test_send_json_names_its_lanes_and_what_went_again() -> None:
    out = result("send", transport="auto", lanes={"tcp": 500, "quic": 100}, resent=64).to_json()
    assert (out["transport"], out["lanes"], out["resent"]) == (
        "auto",
        {"tcp": 500, "quic": 100},
        64,
    )
    assert "resent" not in result("send").to_json(), "only when something went again"


def test_send_json_names_the_node_of_several_it_finished_on() -> None:
    out = result("send", node="10.0.0.2:7070").to_json()
    assert (out["node"], out["retries"]) == ("10.0.0.2:7070", 2)
    assert "node" not in result("send").to_json(), "only where the name leads to several"


def test_json_is_serialisable_and_keeps_transport() -> None:
    out = result("send", transport="quic", seconds=0.0).to_json()
    assert json.loads(json.dumps(out)) == out
    assert out["transport"] == "quic"
    assert out["seconds"] == 0.0
