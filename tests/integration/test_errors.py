"""Bad input, trust failures, conflicts: each a one-line error and an exit code, nothing lost."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import BIN, Daemon, Fluxctl, _env, free_port, wait_for
from .proxy import Proxy


def one_line(stderr: str, prog: str = "fluxctl") -> str:
    """The one error line of `prog` (notices of a newly trusted server and fluxd's JSON log
    lines aside)."""
    skip = ("trusting new", '{"ts"')
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not any(s in ln for s in skip)]
    assert len(lines) == 1, f"expected one error line, got {stderr!r}"
    assert "Traceback" not in stderr
    assert lines[0].startswith(f"{prog}: ")
    return lines[0]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(100_000))
    return path


def tree(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


@pytest.mark.parametrize(
    "remote",
    [
        "/../escape.bin",
        "/a/../../escape.bin",
        "/.flux/staging/x",
        "/ok/\x01ctl",
        "/../../../../tmp/x",
    ],
)
def test_paths_escaping_the_root_are_refused(
    daemon: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path, remote: str
) -> None:
    assert fluxctl("stat", daemon.url("/")).code == 0  # records the server in known_hosts
    outside_before = tree(tmp_path) - tree(daemon.root)
    res = fluxctl("send", str(small), daemon.url(remote), "--json")
    assert res.code == 4, res.stderr
    assert res.json["ok"] is False
    one_line(res.stderr)
    assert tree(tmp_path) - tree(daemon.root) == outside_before, "nothing written outside the root"
    assert not Path("/tmp/x").exists() or Path("/tmp/x").stat().st_size != 100_000


def test_symlink_inside_root_pointing_out_is_refused(
    daemon: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (daemon.root / "link").symlink_to(outside)
    res = fluxctl("send", str(small), daemon.url("/link/evil.bin"))
    assert res.code == 4, res.stderr
    assert list(outside.iterdir()) == []
    res = fluxctl("recv", daemon.url("/link"), str(tmp_path / "x"))
    assert res.code == 4, res.stderr


def test_pin(daemon: Daemon, fluxctl: Fluxctl, small: Path) -> None:
    assert daemon.fingerprint is not None
    ok = fluxctl("send", str(small), daemon.url("/p"), "--pin", daemon.fingerprint.upper())
    assert ok.code == 0, ok.stderr
    assert "trusting new" not in ok.stderr, "a pin does not touch known_hosts"
    wrong = "sha256:" + "0" * 64
    bad = fluxctl("send", str(small), daemon.url("/p"), "--pin", wrong)
    assert bad.code == 4
    assert "does not match --pin" in one_line(bad.stderr)
    malformed = fluxctl("stat", daemon.url("/p"), "--pin", "sha256:xyz")
    assert malformed.code == 2


def test_trust_on_first_use_then_refuse_a_changed_certificate(
    daemon: Daemon, fluxctl: Fluxctl, small: Path
) -> None:
    first = fluxctl("send", str(small), daemon.url("/t"))
    assert first.code == 0
    assert "trusting new server" in first.stderr
    second = fluxctl("stat", daemon.url("/t"))
    assert second.code == 0
    assert "trusting new" not in second.stderr

    daemon.stop()
    subprocess.run(
        [str(BIN / "fluxd"), "certs", "init", "--dir", str(daemon.certs), "--force"],
        check=True,
        capture_output=True,
        env=_env(daemon.home),
    )
    daemon.start()
    changed = fluxctl("stat", daemon.url("/t"), "--json")
    assert changed.code == 4
    assert "CHANGED" in one_line(changed.stderr)
    assert changed.json["exit_code"] == 4


def test_ca_trust(daemon: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path) -> None:
    ok = fluxctl("send", str(small), daemon.url("/c"), "--ca", str(daemon.certs / "ca.pem"))
    assert ok.code == 0, ok.stderr
    other = tmp_path / "other-certs"
    subprocess.run(
        [str(BIN / "fluxd"), "certs", "init", "--dir", str(other)], check=True, capture_output=True
    )
    bad = fluxctl("stat", daemon.url("/c"), "--ca", str(other / "ca.pem"))
    assert bad.code == 4, bad.stderr
    one_line(bad.stderr)


def test_exit_codes(daemon: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path) -> None:
    cases: list[tuple[tuple[str, ...], int]] = [
        (("send", str(tmp_path / "missing"), daemon.url("/x")), 2),
        (("send", str(tmp_path), daemon.url("/x")), 2),
        (("send", str(small), "http://example/x"), 2),
        (("send", str(small), daemon.url("/x"), "--chunk-size", "1"), 2),
        (("send", str(small), daemon.url("/x"), "--transport", "carrier-pigeon"), 2),
        (("recv", daemon.url("/nope"), str(tmp_path / "out")), 6),
        (("rm", daemon.url("/nope")), 6),
        (("recv", daemon.url("/x"), str(tmp_path / "no-such-dir" / "out")), 2),
        (("stat", f"flux://127.0.0.1:{free_port()}/x", "--retry-for", "0"), 5),
    ]
    for args, code in cases:
        res = fluxctl(*args, "--json")
        assert res.code == code, (args, res.stderr)
        assert res.json == {**res.json, "ok": False, "exit_code": code}
        one_line(res.stderr)

    usage = fluxctl("send", "--no-such-option", "--json")
    assert usage.code == 2
    assert usage.json["ok"] is False
    one_line(usage.stderr)

    assert fluxctl("send", str(small), daemon.url("/dir/file")).code == 0
    is_dir = fluxctl("rm", daemon.url("/dir"))
    assert is_dir.code == 6
    assert (daemon.root / "dir" / "file").exists(), "nothing stored is lost"


@pytest.mark.parametrize("transport", ["auto", "tcp", "quic"])
@pytest.mark.parametrize("op", ["send", "recv", "ls", "stat", "rm"])
def test_nothing_listening_fails_at_once(
    fluxctl: Fluxctl, small: Path, tmp_path: Path, op: str, transport: str
) -> None:
    """A first connection refused on every transport is a wrong address or a stopped daemon:
    one line and exit 5 at once, not 300 s of retries (README "Exit codes")."""
    url = f"flux://127.0.0.1:{free_port()}/x"
    args = {"send": (str(small), url), "recv": (url, str(tmp_path / "out"))}.get(op, (url,))
    res = fluxctl(op, *args, "--transport", transport, "--retry-for", "300", timeout=30)
    assert res.code == 5, res.stderr
    assert "connection refused by 127.0.0.1" in one_line(res.stderr)
    assert "is fluxd running?" in res.stderr


def test_corrupt_stored_file_is_never_served(
    daemon: Daemon, fluxctl: Fluxctl, small: Path, tmp_path: Path
) -> None:
    assert fluxctl("send", str(small), daemon.url("/rot")).code == 0
    stored = daemon.root / "rot"
    st = stored.stat()
    data = bytearray(stored.read_bytes())
    data[5000] ^= 0xFF
    stored.write_bytes(data)
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot leaves mtime alone
    res = fluxctl("recv", daemon.url("/rot"), str(tmp_path / "out"), "--json")
    assert res.code == 3, res.stderr
    assert "corrupt" in one_line(res.stderr)
    assert not (tmp_path / "out").exists()


def test_a_second_writer_is_refused_while_the_first_is_alive(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    config = tmp_path / "slow.toml"
    config.write_text('[limits]\nrate_per_subject = "1M"\n')  # the first stays busy for seconds
    daemon = make_daemon("--config", str(config))
    big = tmp_path / "big"
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    first = fluxctl.spawn("send", str(big), daemon.url("/same"), "--chunk-size", "64K")
    staging = daemon.root / ".flux" / "staging"
    wait_for(lambda: any(j.stat().st_size > 0 for j in staging.rglob("journal")), 30, "a chunk")
    second = fluxctl("send", str(big), daemon.url("/same"), "--retry-for", "0", "--json")
    assert second.code == 6, second.stderr
    assert "another session" in second.json["error"]
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert (daemon.root / "same").read_bytes() == big.read_bytes()


def test_a_silent_writer_of_the_same_client_is_superseded(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """A first writer whose link went dark (here a proxy stops forwarding) holds the path; the
    same client coming back waits for it, then supersedes it once it has been silent for as
    long as a dead QUIC connection would be. Both runs end with the whole file, never a mix."""
    daemon = make_daemon("--window", "256K")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    proxy = Proxy(daemon.port, limit=500_000)
    try:
        first = fluxctl.spawn(
            "send",
            str(big),
            daemon.url("/same", port=proxy.port),
            *("--chunk-size", "64K", "--json", "--transport", "tcp"),  # the proxy is TCP
        )
        wait_for(proxy.stalled.is_set, what="first writer to start")
        second = fluxctl("send", str(big), daemon.url("/same"), "--retry-for", "0", "--json")
        assert second.code == 0, second.stderr
        assert daemon.events("superseded"), "the silent first writer was ended"
        proxy.release()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        proxy.close()
    assert (daemon.root / "same").read_bytes() == big.read_bytes()


def test_plaintext(make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, small: Path) -> None:
    daemon = make_daemon("--insecure-plaintext")
    assert daemon.fingerprint is None
    ok = fluxctl("send", str(small), daemon.url("/pt"), "--insecure-plaintext", "--json")
    assert ok.code == 0, ok.stderr
    tls = fluxctl("stat", daemon.url("/pt"), "--retry-for", "0")
    assert tls.code == 5
    one_line(tls.stderr)
    remote = fluxctl("stat", "flux://192.0.2.1:7070/x", "--insecure-plaintext", "--retry-for", "0")
    assert remote.code == 2
    assert "non-loopback" in one_line(remote.stderr)


def test_daemon_refuses_plaintext_on_non_loopback(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(BIN / "fluxd"), "serve", "--insecure-plaintext", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert "non-loopback" in res.stderr
    assert "Traceback" not in res.stderr


def test_daemon_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "fluxd.toml"
    cfg.write_text('listen = "127.0.0.1:0"\nbogus = 1\n')
    res = subprocess.run(
        [str(BIN / "fluxd"), "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert "unknown key" in res.stderr
