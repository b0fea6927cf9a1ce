"""Resume after every kind of interruption, asserting exactly what had to move again.

A stalling proxy makes each interruption deterministic: it passes a fixed number of bytes, then
holds the rest, so the test knows what the receiver can have made durable before it acts.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxio.staging import HEADER_SIZE, RECORD_SIZE
from tests.damage import flip_in_place

from .conftest import Daemon, Fluxctl, Result, free_port, wait_for
from .proxy import Proxy

CHUNK = 64 * 1024
NCHUNKS = 64
SIZE = NCHUNKS * CHUNK - 1000  # a short last chunk
WINDOW = 4 * CHUNK  # the daemon's receive window: at most 4 chunks in flight
LIMIT = 1_000_000  # bytes the proxy lets through before stalling (~15 chunks)
SEND = ("--chunk-size", "64K", "--json", "--transport", "tcp")  # the proxy is TCP


def journal_records(journal: Path) -> int:
    """Durable chunks a staging journal records (no torn tails: writers are never cut mid-write)."""
    try:
        size = journal.stat().st_size
    except FileNotFoundError:
        return 0
    return max(0, (size - HEADER_SIZE) // RECORD_SIZE)


def server_journal(daemon: Daemon) -> Path | None:
    journals = list((daemon.root / ".flux" / "staging").glob("*/journal"))
    return journals[0] if journals else None


def server_held(daemon: Daemon) -> int:
    journal = server_journal(daemon)
    return journal_records(journal) if journal else 0


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(port: int, limit: int | None = LIMIT, upstream: bool = True) -> Proxy:
        proxy = Proxy(port, limit, upstream=upstream)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def interrupted_send(
    daemon: Daemon, fluxctl: Fluxctl, proxy: Proxy, src: Path, *args: str
) -> subprocess.Popen[str]:
    """Start a send through the stalling proxy and wait until the server holds >= 10 chunks."""
    proc = fluxctl.spawn("send", str(src), daemon.url("/f.bin", port=proxy.port), *SEND, *args)
    wait_for(proxy.stalled.is_set, what="proxy to stall")
    wait_for(lambda: server_held(daemon) >= 10, what="server to hold 10 chunks")
    return proc


def upload_finished(daemon: Daemon, uploads: int = 1) -> bool:
    return sum(r["op"] == "upload" for r in daemon.events("access")) >= uploads


def killed_send(daemon: Daemon, fluxctl: Fluxctl, proxy: Proxy, src: Path, uploads: int = 1) -> int:
    """Kill a send part-way; return how many chunks the server then holds.

    The link recovers after the kill: what the client had sent arrives, then its reset. The
    server flushes every chunk it fully received and logs the request (its `uploads`th).
    """
    proc = interrupted_send(daemon, fluxctl, proxy, src, "--retry-for", "0")
    proc.kill()
    proc.communicate()
    proxy.release()
    wait_for(lambda: upload_finished(daemon, uploads), what="server to close the upload")
    return server_held(daemon)


def retried_send_result(proc: subprocess.Popen[str], daemon: Daemon, src: Path) -> dict[str, Any]:
    """Wait for a send that retries by itself; check it completed, resending at most a window."""
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    out = Result(0, stdout, "").json
    assert out["retries"] >= 1
    resent = out["sent"] - SIZE
    assert 0 <= resent <= WINDOW, f"resent {resent} bytes; at most the in-flight window"
    assert (daemon.root / "f.bin").read_bytes() == src.read_bytes()
    return out


def test_resume_after_client_killed(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon("--window", "256K")
    proxy = proxies(daemon.port)
    held = killed_send(daemon, fluxctl, proxy, src)
    # A killed client resets the connection, and a reset discards what the server had not read
    # yet: at most the chunks in flight (the window) plus the partial one are lost.
    assert proxy.forwarded - held * CHUNK <= WINDOW + CHUNK

    second = fluxctl("send", str(src), daemon.url("/f.bin"), *SEND)
    assert second.code == 0, second.stderr
    out = second.json
    assert out["skipped"] == held * CHUNK
    assert out["sent"] == SIZE - held * CHUNK, "nothing durable is sent again"
    assert out["retries"] == 0
    assert (daemon.root / "f.bin").read_bytes() == src.read_bytes()
    assert server_journal(daemon) is None, "staging is removed after commit"


def test_resume_after_daemon_killed(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon("--window", "256K")
    proxy = proxies(daemon.port)
    proc = interrupted_send(daemon, fluxctl, proxy, src, "--retry-for", "120")
    daemon.kill()  # SIGKILL: only what was journaled survives
    held = server_held(daemon)
    proxy.release()
    daemon.start()  # same port; the client keeps retrying through the proxy
    out = retried_send_result(proc, daemon, src)
    assert out["skipped"] == 0
    assert held >= 10


def test_resume_after_tcp_cut(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon("--window", "256K")
    proxy = proxies(daemon.port)
    proc = interrupted_send(daemon, fluxctl, proxy, src, "--retry-for", "120")
    proxy.cut()
    proxy.release()
    retried_send_result(proc, daemon, src)


def test_corrupted_staged_chunk_is_detected_and_resent(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon("--window", "256K")
    proxy = proxies(daemon.port)
    held = killed_send(daemon, fluxctl, proxy, src)
    journal = server_journal(daemon)
    assert journal is not None
    data = journal.with_name("data")
    with data.open("r+b") as f:  # bit rot in chunk 3
        f.seek(3 * CHUNK + 100)
        byte = f.read(1)
        f.seek(3 * CHUNK + 100)
        f.write(bytes([byte[0] ^ 0xFF]))

    second = fluxctl("send", str(src), daemon.url("/f.bin"), *SEND)
    assert second.code == 0, second.stderr
    assert second.json["skipped"] == (held - 1) * CHUNK
    assert second.json["sent"] == SIZE - (held - 1) * CHUNK
    assert (daemon.root / "f.bin").read_bytes() == src.read_bytes()


def test_corrupted_staged_chunk_over_a_stored_copy_is_resent(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    """Staged chunks and the file at the destination together: a staged chunk damaged between
    attempts is not offered; the stored copy's chunk at that index is, but the new version
    differs there, so it is sent again; chunks both versions share come from the stored copy."""
    daemon = make_daemon("--window", "256K")
    old = src.read_bytes()
    assert fluxctl("send", str(src), daemon.url("/f.bin"), *SEND).code == 0
    new = bytearray(os.urandom(SIZE))
    shared = 60 * CHUNK  # chunks 60.. are the same in both versions
    new[shared:] = old[shared:]
    src.write_bytes(new)
    proxy = proxies(daemon.port)
    held = killed_send(daemon, fluxctl, proxy, src, uploads=2)
    assert 3 < held < 60
    journal = server_journal(daemon)
    assert journal is not None
    flip_in_place(journal.with_name("data"), 3 * CHUNK + 100)

    second = fluxctl("send", str(src), daemon.url("/f.bin"), *SEND)
    assert second.code == 0, second.stderr
    assert second.json["sent"] == shared - (held - 1) * CHUNK
    assert (daemon.root / "f.bin").read_bytes() == bytes(new)
    uploads = [r["result"] for r in daemon.events("access") if r["op"] == "upload"]
    assert uploads[2:] == ["ok"], "chunk 3 was never offered: no commit had to fail"


def test_local_file_changed_between_attempts(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon("--window", "256K")
    proxy = proxies(daemon.port)
    held = killed_send(daemon, fluxctl, proxy, src)
    assert held > 2

    # Change one chunk the server already holds and one it does not; same size.
    content = bytearray(src.read_bytes())
    content[2 * CHUNK : 2 * CHUNK + 10] = b"CHANGED!!!"
    content[50 * CHUNK] ^= 0x01
    src.write_bytes(content)

    second = fluxctl("send", str(src), daemon.url("/f.bin"), *SEND)
    assert second.code == 0, second.stderr
    assert second.json["skipped"] == (held - 1) * CHUNK
    assert (daemon.root / "f.bin").read_bytes() == bytes(content), "exactly the current file"


def test_sigterm_keeps_partial_upload_and_client_resumes(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon("--window", "256K")
    proxy = proxies(daemon.port)
    proc = interrupted_send(daemon, fluxctl, proxy, src, "--retry-for", "120")
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.events("stopped"), "clean shutdown"
    held = server_held(daemon)
    assert held >= 10, "partial upload kept"
    proxy.release()
    daemon.start()
    retried_send_result(proc, daemon, src)


def test_recv_resumes_after_client_killed(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    src: Path,
    tmp_path: Path,
    proxies: Callable[..., Proxy],
) -> None:
    daemon = make_daemon()
    assert fluxctl("send", str(src), daemon.url("/f.bin"), *SEND).code == 0
    proxy = proxies(daemon.port, upstream=False)
    dest = tmp_path / "out.bin"
    journal = tmp_path / ".out.bin.fluxpart.journal"
    proc = fluxctl.spawn(
        "recv", daemon.url("/f.bin", port=proxy.port), str(dest), "--json", "--transport", "tcp"
    )
    wait_for(proxy.stalled.is_set, what="proxy to stall")
    wait_for(lambda: journal_records(journal) >= 10, what="client to hold 10 chunks")
    proc.kill()
    proc.communicate()
    held = journal_records(journal)
    assert not dest.exists(), "nothing at the destination before the digest verifies"

    second = fluxctl("recv", daemon.url("/f.bin"), str(dest), "--json")
    assert second.code == 0, second.stderr
    assert second.json["skipped"] == held * CHUNK
    assert second.json["received"] == SIZE - held * CHUNK
    assert dest.read_bytes() == src.read_bytes()
    assert not journal.exists()


def test_recv_resume_when_remote_file_changed(
    daemon: Daemon,
    fluxctl: Fluxctl,
    src: Path,
    tmp_path: Path,
    proxies: Callable[..., Proxy],
) -> None:
    assert fluxctl("send", str(src), daemon.url("/f.bin"), *SEND).code == 0
    proxy = proxies(daemon.port, upstream=False)
    dest = tmp_path / "out.bin"
    journal = tmp_path / ".out.bin.fluxpart.journal"
    proc = fluxctl.spawn(
        "recv", daemon.url("/f.bin", port=proxy.port), str(dest), "--json", "--transport", "tcp"
    )
    wait_for(lambda: journal_records(journal) >= 10, what="client to hold 10 chunks")
    proc.kill()
    proc.communicate()

    content = bytearray(src.read_bytes())
    content[0:5] = b"NEWER"  # chunk 0, which the client already holds
    src.write_bytes(content)
    assert fluxctl("send", str(src), daemon.url("/f.bin"), *SEND).code == 0

    second = fluxctl("recv", daemon.url("/f.bin"), str(dest), "--json")
    assert second.code == 0, second.stderr
    assert dest.read_bytes() == bytes(content), "the new version, never a mix"


def test_free_port_helper_gives_bindable_port() -> None:
    assert 0 < free_port() < 65536


def test_sending_again_moves_only_what_changed(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "again.bin"
    data = bytearray(os.urandom(6 * 1024 * 1024))
    src.write_bytes(data)
    args = ("send", str(src), daemon.url("/again.bin"), "--chunk-size", "1M", "--json")
    first = fluxctl(*args)
    assert first.code == 0 and first.json["sent"] == len(data)
    same = fluxctl(*args)
    assert same.code == 0, same.stderr
    assert (same.json["sent"], same.json["skipped"]) == (0, len(data))
    data[3 * 1024 * 1024 + 7] ^= 0xFF  # one chunk changes
    src.write_bytes(data)
    changed = fluxctl(*args)
    assert changed.code == 0, changed.stderr
    assert changed.json["sent"] == 1024 * 1024
    assert (daemon.root / "again.bin").read_bytes() == bytes(data)
