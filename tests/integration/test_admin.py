"""The admin listener of a real daemon: metrics after known transfers, health, tokens, HTTP."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from fluxd.admin.server import CHECK_FRESH, STALE_AFTER
from fluxio.requests import Request
from fluxproto import Commit, Committed, OpenUpload, Status, chunk_digest

from .conftest import Daemon, Fluxctl
from .test_auth import issue
from .test_v2 import CS, LONG, send_pieces, session


def get(
    daemon: Daemon, path: str, method: str = "GET", token: str | None = None
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.admin_port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and (m.group(2) or "") == want:
            return float(m.group(3))
    return 0.0


def test_metrics_count_known_transfers(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    before = get(daemon, "/metrics")[1]
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 300_001)
    assert fluxctl("send", str(src), daemon.url("/a.bin")).code == 0
    assert fluxctl("recv", daemon.url("/a.bin"), str(tmp_path / "b.bin")).code == 0
    assert fluxctl("recv", daemon.url("/missing.bin"), str(tmp_path / "c.bin")).code != 0
    status, after = get(daemon, "/metrics")
    assert status == 200

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("fluxd_bytes_in_total") == 300_001
    assert moved("fluxd_bytes_out_total") == 300_001
    assert moved("fluxd_requests_total", op="upload", result="ok") == 1
    assert moved("fluxd_requests_total", op="download", result="ok") == 1
    assert moved("fluxd_requests_total", op="download", result="error 404") == 1
    assert moved("fluxd_request_duration_seconds_count", op="upload") == 1
    assert sample(after, "fluxd_housekeeping_runs_total", job="recover") == 1
    assert sample(after, "fluxd_uploads_open") == 0


def test_a_chunk_two_lanes_sent_counts_as_resent(daemon: Daemon) -> None:
    """Two connections drive one upload (PROTOCOL.md 6.3) and both send chunk 1, as a client
    does when a lane stalls: it is written twice, counted once in bytes, once as resent."""
    data = os.urandom(4 * CS)
    pieces = [data[i * CS : (i + 1) * CS] for i in range(4)]
    before = get(daemon, "/metrics")[1]

    def send(req: Request, indices: range) -> Awaitable[int]:
        return send_pieces(req, pieces, indices)

    async def main() -> None:
        async with session(daemon, "tcp") as a, session(daemon, "tcp") as b:
            first = await a.open(lambda rid: OpenUpload(rid, "/twice.bin", len(data), CS))
            tid = (await first.expect(Status, LONG)).tid
            sent_a = await send(first, range(2))
            other = await b.open(
                lambda rid: OpenUpload(rid, "/twice.bin", len(data), CS, attach=tid)
            )
            await other.expect(Status, LONG)
            sent_b = await send(other, range(1, 4))
            other.send(Commit(other.rid, chunk_digest(data), sent_b))
            await other.expect(Committed, LONG)
            first.send(Commit(first.rid, chunk_digest(data), sent_a))
            await first.expect(Committed, LONG)

    uvloop.run(main())
    assert (daemon.root / "twice.bin").read_bytes() == data
    after = get(daemon, "/metrics")[1]
    moved = sample(after, "fluxd_chunks_resent_total") - sample(before, "fluxd_chunks_resent_total")
    assert moved == 1
    bytes_in = sample(after, "fluxd_bytes_in_total") - sample(before, "fluxd_bytes_in_total")
    assert bytes_in == len(data)


def test_health_and_http_errors(daemon: Daemon) -> None:
    assert get(daemon, "/livez") == (200, "ok\n")
    assert get(daemon, "/readyz") == (200, "ok\n")
    assert get(daemon, "/nothing")[0] == 404
    assert get(daemon, "/metrics", method="POST")[0] == 405
    assert get(daemon, "/livez", method="HEAD") == (200, "")
    with socket.create_connection(("127.0.0.1", daemon.admin_port), timeout=30) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nBad Header\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", daemon.admin_port), timeout=30) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize(
    ("host", "status"),
    [("localhost:7071", 200), ("[::1]:7071", 200), ("127.0.0.5", 200), ("evil.example:7071", 403)],
)
def test_without_a_token_only_a_loopback_host_is_served(
    daemon: Daemon, host: str, status: int
) -> None:
    """A page a browser visits could point a name of its own at 127.0.0.1 (DNS rebinding)."""
    with socket.create_connection(("127.0.0.1", daemon.admin_port), timeout=30) as s:
        s.sendall(f"GET /status.json HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert s.recv(100).startswith(f"HTTP/1.1 {status} ".encode())


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Folders made immutable (`chattr +i`, which stops root too); always undone."""
    if shutil.which("chattr") is None:
        pytest.fail("chattr (e2fsprogs) is needed to make the storage unwritable for root")
    made: list[Path] = []
    yield made
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_readiness_follows_a_storage_that_cannot_be_written(
    daemon: Daemon, immutable: list[Path]
) -> None:
    reserved = daemon.root / ".flux" / "tmp"
    assert get(daemon, "/readyz") == (200, "ok\n")
    subprocess.run(["chattr", "+i", str(reserved)], check=True)
    immutable.append(reserved)
    # The answer of a check younger than CHECK_FRESH stands meanwhile, then the next one's.
    body = until(daemon, "/readyz", 503, CHECK_FRESH + 30)[1]
    assert body.startswith("storage: cannot write under the root")
    assert get(daemon, "/livez")[0] == 200
    subprocess.run(["chattr", "-i", str(reserved)], check=True)
    assert until(daemon, "/readyz", 200, CHECK_FRESH + 30)[1] == "ok\n"


def test_a_daemon_requiring_tokens_requires_the_admin_scope(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon("--no-anonymous")
    assert get(daemon, "/metrics")[0] == 401
    assert get(daemon, "/metrics", token="not-a-token")[0] == 401
    reader = issue(daemon, "ops", "--scope", "read:/")
    assert get(daemon, "/metrics", token=reader)[0] == 403
    admin = issue(daemon, "ops", "--scope", "admin:/")
    assert get(daemon, "/metrics", token=admin)[0] == 200
    assert get(daemon, "/", token=admin)[0] == 200


def until(daemon: Daemon, path: str, status: int, within: float) -> tuple[int, str, int]:
    """GET `path` back to back until it answers `status`; (status, body, requests answered).

    Raises:
        AssertionError: it did not within `within` seconds.
    """
    deadline, answered = time.monotonic() + within, 0
    while time.monotonic() < deadline:
        got = get(daemon, path)
        answered += 1
        if got[0] == status:
            return got[0], got[1], answered
    raise AssertionError(f"{path} did not answer {status} within {within} s (last: {got})")


def test_the_admin_listener_answers_while_the_daemons_loop_is_blocked(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    fifo = tmp_path / "beat.fifo"
    os.mkfifo(fifo)
    daemon = make_daemon(env={"FLUX_PAUSE_AT": f"loop-beat:3:{fifo}"})
    # Opening the pipe returns once the daemon's loop opened it at its third heartbeat: from
    # now until the pipe is closed that loop is blocked, reading it.
    with open(fifo, "wb"):
        status, metrics = get(daemon, "/metrics")
        assert status == 200 and "fluxd_uploads_open 0.0" in metrics
        status, body, answered = until(daemon, "/livez", 503, STALE_AFTER + 30)
        assert body.startswith("the daemon's event loop has not run for ")
        assert float(body.split()[-2]) >= STALE_AFTER  # rounded to 0.1 s
        assert answered >= 1
        assert get(daemon, "/metrics")[0] == 200
    assert until(daemon, "/livez", 200, 30)[:2] == (200, "ok\n")
