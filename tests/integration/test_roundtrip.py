"""Round trips through a real daemon: every edge size, ls/stat/rm, JSON output, the access log."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from .conftest import Daemon, Fluxctl

CHUNK = 64 * 1024


def xxh(data: bytes) -> str:
    return "xxh128:" + xxhash.xxh3_128_hexdigest(data)


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "quic"])


@TRANSPORTS
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7])
def test_send_recv_edge_sizes(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, size: int, transport: str
) -> None:
    src = tmp_path / "src.bin"
    data = write_random(src, size)
    url = daemon.url(f"/sizes/{size}.bin")

    sent = fluxctl("send", str(src), url, "--chunk-size", "64K", "--json", "--transport", transport)
    assert sent.code == 0, sent.stderr
    out = sent.json
    assert out == {
        "ok": True,
        "op": "send",
        "path": f"/sizes/{size}.bin",
        "bytes": size,
        "sent": size,
        "skipped": 0,
        "retries": 0,
        "seconds": out["seconds"],
        "digest": xxh(data),
        "transport": transport,
        "lanes": {transport: size} if size else {},
    }
    assert (daemon.root / "sizes" / f"{size}.bin").read_bytes() == data

    back = tmp_path / "back.bin"
    got = fluxctl("recv", url, str(back), "--json", "--transport", transport)
    assert got.code == 0, got.stderr
    assert got.json["transport"] == transport
    assert got.json["received"] == size
    assert got.json["digest"] == xxh(data)
    assert back.read_bytes() == data
    assert not list(tmp_path.glob(".back.bin.fluxpart*")), "partial files must be gone"


@pytest.mark.slow
@TRANSPORTS
def test_large_file_round_trip(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    size = 100 * 1024 * 1024 + 12345
    src = tmp_path / "big.bin"
    data = write_random(src, size)
    sent = fluxctl("send", str(src), daemon.url("/big.bin"), "--json", "--transport", transport)
    assert sent.code == 0, sent.stderr
    assert sent.json["sent"] == size
    assert sent.json["transport"] == transport
    back = tmp_path / "big.back"
    got = fluxctl("recv", daemon.url("/big.bin"), str(back), "--json", "--transport", transport)
    assert got.code == 0, got.stderr
    assert got.json["digest"] == sent.json["digest"] == xxh(data)
    assert back.read_bytes() == data


def test_resend_of_unchanged_file_after_commit_moves_everything_to_a_new_version(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    # A committed file is replaced atomically by a second send (scp semantics: overwrite).
    src = tmp_path / "f"
    write_random(src, 3 * CHUNK)
    assert fluxctl("send", str(src), daemon.url("/f"), "--chunk-size", "64K").code == 0
    newer = write_random(src, 2 * CHUNK)
    assert fluxctl("send", str(src), daemon.url("/f"), "--chunk-size", "64K").code == 0
    assert (daemon.root / "f").read_bytes() == newer


def test_recv_into_directory_uses_remote_name(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "a.txt"
    data = write_random(src, 1000)
    assert fluxctl("send", str(src), daemon.url("/docs/a.txt")).code == 0
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert fluxctl("recv", daemon.url("/docs/a.txt"), str(outdir)).code == 0
    assert (outdir / "a.txt").read_bytes() == data


def test_send_to_a_path_ending_in_slash_keeps_the_local_name(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "report.pdf"
    data = write_random(src, 5000)
    res = fluxctl("send", str(src), daemon.url("/inbox/"), "--json")
    assert res.code == 0, res.stderr
    assert res.json["path"] == "/inbox/report.pdf"
    assert (daemon.root / "inbox" / "report.pdf").read_bytes() == data


def test_ls_stat_rm(daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path) -> None:
    src = tmp_path / "x"
    data = write_random(src, 4096)
    for name in ("b.bin", "a.bin"):
        assert fluxctl("send", str(src), daemon.url(f"/dir/{name}")).code == 0
    assert fluxctl("send", str(src), daemon.url("/dir/sub/c.bin")).code == 0

    listing = fluxctl("ls", daemon.url("/dir"), "--json")
    assert listing.code == 0, listing.stderr
    entries = listing.json["entries"]
    assert [(e["name"], e["kind"]) for e in entries] == [
        ("a.bin", "file"),
        ("b.bin", "file"),
        ("sub", "dir"),
    ]
    assert entries[0]["size"] == 4096
    assert [e["digest"] for e in entries] == [xxh(data), xxh(data), None], "JSON shows digests"
    root = fluxctl("ls", daemon.url("/"), "--json").json["entries"]
    assert [e["name"] for e in root] == ["dir"], ".flux must stay hidden"

    st = fluxctl("stat", daemon.url("/dir/a.bin"), "--json")
    assert st.code == 0
    assert st.json["size"] == 4096
    assert st.json["kind"] == "file"
    assert st.json["digest"] == xxh(data)
    human = fluxctl("ls", daemon.url("/dir"))
    assert "a.bin" in human.stdout
    assert "sub/" in human.stdout

    assert fluxctl("rm", daemon.url("/dir/a.bin")).code == 0
    assert not (daemon.root / "dir" / "a.bin").exists()
    gone = fluxctl("stat", daemon.url("/dir/a.bin"), "--json")
    assert gone.code == 6
    assert gone.json["ok"] is False
    assert gone.json["exit_code"] == 6


def test_ls_pages_through_large_directories(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    many = daemon.root / "many"
    many.mkdir(parents=True)
    names = sorted(f"f{i:04d}" for i in range(400))  # more than one LISTING page
    for name in names:
        (many / name).write_bytes(b"x")
    listing = fluxctl("ls", daemon.url("/many"), "--json")
    assert listing.code == 0, listing.stderr
    assert [e["name"] for e in listing.json["entries"]] == names


def test_one_structured_log_line_per_transfer(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    src = tmp_path / "logme"
    write_random(src, 70000)
    assert fluxctl("send", str(src), daemon.url("/logme")).code == 0
    assert fluxctl("stat", daemon.url("/nope")).code == 6
    daemon.stop()
    requests = daemon.events("access")
    uploads = [r for r in requests if r["op"] == "upload"]
    assert len(uploads) == 1
    line = uploads[0]
    assert line["path"] == "/logme"
    assert line["bytes"] == 70000
    assert line["result"] == "ok"
    assert line["peer"].startswith("127.0.0.1:")
    assert line["duration"] >= 0
    failed = [r for r in requests if r["op"] == "stat"]
    assert failed[0]["result"].startswith("error 404")
