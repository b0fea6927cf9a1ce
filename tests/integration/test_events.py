"""Events: command and URL hooks get each event, from a durable outbox, at least once."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..damage import flip_in_place
from .conftest import BIN, Daemon, Fluxctl, wait_for

HOOK = Path(__file__).with_name("eventhook.py")
SECRET = "s3cret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers `statuses` in turn
    (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in list(self.posts)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


class Gate:
    """A FIFO the hook waits on, held open here (read-write: opening never blocks); each byte
    written lets one hook run go on (and closing lets those still waiting go on too, so no
    hook outlives the test)."""

    def __init__(self, fifo: Path) -> None:
        os.mkfifo(fifo)
        self.fifo = fifo
        self._fd: int | None = os.open(fifo, os.O_RDWR)

    def release(self, runs: int) -> None:
        assert self._fd is not None
        os.write(self._fd, b"!" * runs)

    def close(self) -> None:
        if self._fd is not None:  # once: the number may belong to another file afterwards
            os.write(self._fd, b"!" * 64)
            os.close(self._fd)
            self._fd = None


Hooked = Callable[..., tuple[Receiver, Daemon]]


@pytest.fixture
def hooked(
    make_daemon: Callable[..., Daemon], tmp_path: Path, receiver: Callable[..., Receiver]
) -> Hooked:
    """Starts a receiver answering `statuses` and a daemon POSTing its events there, signed;
    `top` and `events` go into the daemon's config file."""

    def make(
        statuses: list[int] | None = None, top: dict[str, Any] | None = None, **events: Any
    ) -> tuple[Receiver, Daemon]:
        r = receiver(statuses)
        cfg = config(tmp_path, "hooked", top, url=r.url, secret=SECRET, **events)
        return r, make_daemon("--config", cfg)

    return make


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.close()


def config(tmp_path: Path, name: str, top: dict[str, Any] | None = None, **events: Any) -> str:
    """A config file with `top` keys and an [events] table; returns the --config argument."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in (top or {}).items()]
    lines += ["[events]"] + [f"{k} = {json.dumps(v)}" for k, v in events.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def command(out: Path, fifo: Path | None = None) -> list[str]:
    out.mkdir(exist_ok=True)
    return [sys.executable, str(HOOK), str(out), *([str(fifo)] if fifo else [])]


def delivered(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_bytes()) for p in sorted(out.glob("*.json"))]


def waiting(out: Path) -> int:
    """How many hook runs have reached the gate so far."""
    return len(list(out.glob("waiting.*")))


def outbox(d: Daemon, folder: str = "pending") -> list[Path]:
    """The files in a folder of `d`'s outbox (its default place, under the data dir)."""
    return list((d.home / "fluxd-home" / "events" / folder).iterdir())


def send(fluxctl: Fluxctl, d: Daemon, tmp_path: Path, name: str, data: bytes = b"x") -> None:
    src = tmp_path / name
    src.write_bytes(data)
    result = fluxctl("send", str(src), d.url(name))
    assert result.code == 0, result.stderr


def test_command_hook_gets_the_upload_event_on_stdin(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    d = make_daemon("--config", config(tmp_path, "c", command=command(out)))
    send(fluxctl, d, tmp_path, "a.txt", b"hello")
    wait_for(lambda: len(delivered(out)) == 1, what="the hook's event")
    (event,) = delivered(out)
    assert event["type"] == "upload-finished"
    assert event["path"] == "/a.txt" and event["size"] == 5
    assert event["digest"].startswith("xxh128:") and len(event["id"]) == 32
    assert event["subject"] == "anonymous" and event["transport"] in ("tcp", "quic")
    wait_for(lambda: not outbox(d), what="the outbox to empty")


def test_url_hook_gets_signed_events_for_upload_download_delete(
    hooked: Hooked, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    r, d = hooked()
    send(fluxctl, d, tmp_path, "b.bin", b"data" * 100)
    assert fluxctl("recv", d.url("b.bin"), str(tmp_path / "b.copy")).code == 0
    assert fluxctl("rm", d.url("b.bin")).code == 0
    wait_for(lambda: len(r.posts) == 3, what="three events")
    kinds = sorted(e["type"] for e in r.events())
    assert kinds == ["deleted", "download-finished", "upload-finished"]
    for headers, body in r.posts:
        mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Fluxd-Signature"] == f"sha256={mac}"
        assert headers["X-Fluxd-Event-Id"] == json.loads(body)["id"]
    download = next(e for e in r.events() if e["type"] == "download-finished")
    assert download["bytes"] == 400 and download["path"] == "/b.bin"
    # A wrong signature is told apart: the key matters.
    headers, body = r.posts[0]
    assert headers["X-Fluxd-Signature"] != "sha256=" + hmac.new(b"x", body, "sha256").hexdigest()


def test_event_pending_at_sigkill_is_delivered_after_restart(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    tmp_path: Path,
    gate: Gate,
) -> None:
    out = tmp_path / "out"
    cfg = config(tmp_path, "k", command=command(out, gate.fifo))
    d = make_daemon("--config", cfg)
    send(fluxctl, d, tmp_path, "k.txt")
    pending = outbox(d)
    assert len(pending) == 1  # durable before COMMITTED
    wait_for(lambda: waiting(out) == 1, what="the hook at the gate")
    d.kill()
    assert delivered(out) == []
    gate.release(1)  # the orphaned run delivers to nobody: the daemon never heard it finish
    wait_for(lambda: len(delivered(out)) == 1, what="the orphaned run")
    Path(cfg).write_text(Path(config(tmp_path, "k2", command=command(out))).read_text())
    d.start()
    wait_for(lambda: len(delivered(out)) == 2, what="the event again after the restart")
    first, again = delivered(out)
    assert first == again  # the same event, id and all: the receiver drops the duplicate
    assert pending[0].name.endswith(f"-{first['id']}.json")
    assert [e["count"] for e in d.events("events-pending")] == [1]


def test_a_hanging_hook_does_not_stall_uploads(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    tmp_path: Path,
    gate: Gate,
) -> None:
    out = tmp_path / "out"
    cfg = config(tmp_path, "h", command=command(out, gate.fifo), concurrency=1, timeout=600)
    d = make_daemon("--config", cfg)
    send(fluxctl, d, tmp_path, "f0.txt")
    wait_for(lambda: waiting(out) == 1, what="the first hook run at the gate")
    for i in range(1, 4):
        send(fluxctl, d, tmp_path, f"f{i}.txt")
    # Every upload finished while the first hook run hangs, and none of them ran a hook.
    assert delivered(out) == [] and waiting(out) == 1
    gate.release(4)
    wait_for(lambda: len(delivered(out)) == 4, what="the four events once released")
    assert sorted(e["path"] for e in delivered(out)) == [f"/f{i}.txt" for i in range(4)]


def test_failed_deliveries_retry_with_backoff_and_keep_their_id(
    hooked: Hooked, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    r, d = hooked([500, 503], backoff=0.05)
    send(fluxctl, d, tmp_path, "r.txt")
    wait_for(lambda: len(r.posts) == 3, what="two failures and a success")
    ids = {e["id"] for e in r.events()}
    assert len(ids) == 1  # the same event each time: a receiver drops duplicates by id
    wait_for(lambda: not outbox(d), what="the delivered event's removal")
    retries = d.events("event-retry")
    assert [e["retry_in"] for e in retries] == [0.05, 0.1]
    assert all(e["id"] in ids for e in retries)


def test_an_event_failing_every_attempt_is_kept_aside(
    hooked: Hooked, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    r, d = hooked([500, 500, 500], backoff=0.01, attempts=2)
    send(fluxctl, d, tmp_path, "p.txt")
    wait_for(lambda: bool(d.events("event-dead")), what="the event given up on")
    (dead,) = d.events("event-dead")
    assert dead["attempts"] == 2 and "answered 500" in dead["error"]
    wait_for(lambda: len(outbox(d, "dead")) == 1, what="the dead-letter file")
    assert not outbox(d) and outbox(d, "dead")[0] == Path(dead["kept"])
    assert len(r.posts) == 2


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"url": "http://127.0.0.1:1/"}, "events.url needs events.secret"),
        ({"url": "ftp://x/", "secret": "k"}, "events.url must be an http"),
        ({"command": "hook", "types": ["uploaded"]}, "events.types: unknown 'uploaded'"),
        ({"command": "hook", "attempts": 0}, "events.attempts must be at least 1"),
    ],
)
def test_bad_events_config_exits_2_with_one_line(
    tmp_path: Path, events: dict[str, Any], message: str
) -> None:
    cmd = [str(BIN / "fluxd"), "serve", "--root", str(tmp_path / "root")]
    cmd += ["--config", config(tmp_path, "bad", **events), "--listen", "127.0.0.1:0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_corruption_found_by_a_download_and_by_scrub_is_reported(
    hooked: Hooked, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    r, d = hooked(top={"scrub_every": 1}, types=["corruption"])
    send(fluxctl, d, tmp_path, "rot.bin", b"r" * 5000)
    flip_in_place(d.root / "rot.bin", 100)
    assert fluxctl("recv", d.url("rot.bin"), str(tmp_path / "copy")).code == 3
    wait_for(lambda: {e.get("found_by") for e in r.events()} >= {"download", "scrub"}, what="both")
    assert all(e["type"] == "corruption" and e["path"] == "/rot.bin" for e in r.events())
    by_download = next(e for e in r.events() if e["found_by"] == "download")
    assert "corrupt at chunk 0" in by_download["detail"]


def test_a_commit_finding_its_basis_damaged_reports_corruption(
    hooked: Hooked, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    r, d = hooked()
    chunk = 64 * 1024
    data = bytearray(os.urandom(8 * chunk))
    args = ("--chunk-size", "64K", "--retry-for", "0")
    (tmp_path / "f.bin").write_bytes(data)
    assert fluxctl("send", str(tmp_path / "f.bin"), d.url("f.bin"), *args).code == 0
    flip_in_place(d.root / "f.bin", 2 * chunk)
    data[6 * chunk] ^= 0xFF  # the new version shares the damaged chunk 2 with the stored one
    (tmp_path / "f.bin").write_bytes(data)
    assert fluxctl("send", str(tmp_path / "f.bin"), d.url("f.bin"), *args).code == 0
    wait_for(lambda: len(r.posts) == 3, what="two uploads and the corruption")
    kinds = [e["type"] for e in r.events()]
    assert sorted(kinds) == ["corruption", "upload-finished", "upload-finished"]
    (found,) = [e for e in r.events() if e["type"] == "corruption"]
    assert found["found_by"] == "commit" and found["path"] == "/f.bin"
    assert "are corrupt" in found["detail"]
