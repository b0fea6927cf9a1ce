"""QUIC through a hostile link: loss, a NAT that rebinds, UDP blocked, a daemon that dies."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import uvloop

from fluxctl.connect import ClientOptions
from fluxctl.results import TransferResult
from fluxctl.retry import Retrier
from fluxctl.trust import TrustPolicy
from fluxctl.upload import Upload
from fluxctl.url import FluxURL
from fluxio.transports.quic import QuicChannel

from .conftest import BIN, Daemon, Fluxctl, Result, _env, wait_for
from .test_admin import get, sample
from .test_resume import server_held
from .udp_relay import UdpRelay

MIB = 1024 * 1024


def migrations(daemon: Daemon) -> float:
    """The daemon's count of QUIC clients that moved to another address (its /metrics)."""
    return sample(get(daemon, "/metrics")[1], "fluxd_quic_migrations_total")


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_five_percent_loss_still_completes(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, relays: Callable[..., UdpRelay]
) -> None:
    data = random_file(tmp_path / "src", 3 * MIB + 123)
    relay = relays(daemon.port, loss=0.05)
    url = daemon.url("/lossy", port=relay.port)
    sent = fluxctl("send", str(tmp_path / "src"), url, "--transport", "quic", "--json")
    assert sent.code == 0, sent.stderr
    assert sent.json["transport"] == "quic"
    assert sent.json["retries"] == 0
    assert (daemon.root / "lossy").read_bytes() == data
    got = fluxctl("recv", url, str(tmp_path / "back"), "--transport", "quic", "--json")
    assert got.code == 0, got.stderr
    assert (tmp_path / "back").read_bytes() == data
    stats = relay.stats()
    assert stats["c2s"]["dropped"] > 0 and stats["s2c"]["dropped"] > 0, "the link really lost"
    assert migrations(daemon) == 0, "lost and reordered datagrams are no migration"


def test_nat_rebinding_mid_transfer_needs_no_reconnect(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, relays: Callable[..., UdpRelay]
) -> None:
    data = random_file(tmp_path / "src", 24 * MIB)
    relay = relays(daemon.port)
    url = daemon.url("/moved", port=relay.port)
    proc = fluxctl.spawn("send", str(tmp_path / "src"), url, "--transport", "quic", "--json")
    relay.wait_for(lambda s: s["c2s"]["forwarded"] > 2000, timeout=60)  # well into the transfer
    new_port = relay.rebind()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    out = Result(0, stdout, "").json
    assert out["retries"] == 0, "the daemon followed the new address"
    assert out["sent"] == len(data), "nothing was sent twice"
    assert new_port in relay.server_side_ports
    assert (daemon.root / "moved").read_bytes() == data
    assert migrations(daemon) == 1


def test_udp_blocked_auto_falls_back_to_tcp(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    # --no-quic: nothing answers on the UDP port, as when a firewall drops UDP.
    daemon = make_daemon("--no-quic")
    data = random_file(tmp_path / "src", MIB)
    res = fluxctl("send", str(tmp_path / "src"), daemon.url("/fallback"), "--json")
    assert res.code == 0, res.stderr
    assert (res.json["transport"], res.json["lanes"]) == ("auto", {"tcp": len(data)})
    assert res.json["seconds"] < 5
    assert (daemon.root / "fallback").read_bytes() == data


def test_daemon_killed_mid_transfer_resumes_over_quic(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    daemon = make_daemon("--window", "1M")
    data = random_file(tmp_path / "src", 24 * MIB)
    args = ("--transport", "quic", "--chunk-size", "256K", "--json")
    proc = fluxctl.spawn("send", str(tmp_path / "src"), daemon.url("/f"), *args, "--retry-for", "0")
    wait_for(lambda: server_held(daemon) >= 8, what="the daemon to hold 8 chunks")
    daemon.kill()
    proc.communicate(timeout=60)
    held = server_held(daemon)
    daemon.start()
    second = fluxctl("send", str(tmp_path / "src"), daemon.url("/f"), *args)
    assert second.code == 0, second.stderr
    assert second.json["transport"] == "quic"
    assert second.json["skipped"] == held * 256 * 1024
    assert second.json["sent"] == len(data) - held * 256 * 1024, "only what was missing"
    assert (daemon.root / "f").read_bytes() == data


def test_client_rebind_mid_transfer_needs_no_reconnect(
    daemon: Daemon, tmp_path: Path, relays: Callable[..., UdpRelay]
) -> None:
    src = tmp_path / "src"
    data = random_file(src, 24 * MIB)
    relay = relays(daemon.port)
    url = FluxURL.parse(daemon.url("/rebound", port=relay.port))
    opts = ClientOptions(trust=TrustPolicy.from_options(None, daemon.fingerprint), transport="quic")

    async def main() -> TransferResult:
        retrier = Retrier(url, opts)
        moves: list[asyncio.Task[None]] = []

        def progress(done: int, total: int) -> None:
            channel = retrier.channel
            if not moves and done > total // 4 and isinstance(channel, QuicChannel):
                moves.append(asyncio.get_running_loop().create_task(channel.rebind()))

        result = await Upload(src, url, opts, progress).run(retrier)
        await asyncio.gather(*moves)
        assert moves, "the transfer was rebound part-way"
        return result

    result = uvloop.run(main())
    assert result.retries == 0
    assert result.moved == len(data), "nothing was sent twice"
    assert len(relay.client_addresses) == 2, "the client really moved"
    assert (daemon.root / "rebound").read_bytes() == data
    # The relay's side towards the daemon kept its port: the daemon saw no move to count (the
    # NAT-rebinding test above is the one it sees).
    assert migrations(daemon) == 0


def test_client_moves_by_itself_when_the_path_goes_silent(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path, relays: Callable[..., UdpRelay]
) -> None:
    data = random_file(tmp_path / "src", 24 * MIB)
    relay = relays(daemon.port)
    url = daemon.url("/silent", port=relay.port)
    proc = fluxctl.spawn("send", str(tmp_path / "src"), url, "--transport", "quic", "--json")
    relay.wait_for(lambda s: s["c2s"]["forwarded"] > 2000, timeout=60)
    relay.set(blackhole=True)  # the old path dies: no error, just silence
    wait_for(lambda: len(relay.client_addresses) >= 2, what="the client to move to a new socket")
    relay.set(blackhole=False)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    out = Result(0, stdout, "").json
    assert out["retries"] == 0, "moved, not reconnected"
    assert (daemon.root / "silent").read_bytes() == data


def quic_requests(daemon: Daemon) -> list[dict[str, object]]:
    return [r for r in daemon.events("access") if r.get("transport") == "quic"]


def test_repeat_command_resumes_the_tls_session_with_0rtt(
    daemon: Daemon, fluxctl: Fluxctl, tmp_path: Path
) -> None:
    random_file(tmp_path / "src", 1000)
    assert fluxctl("send", str(tmp_path / "src"), daemon.url("/t"), "--transport", "quic").code == 0
    tickets = daemon.home / "client-config" / "fluxctl" / "quic_tickets.json"
    assert tickets.stat().st_mode & 0o777 == 0o600
    assert fluxctl("stat", daemon.url("/t"), "--transport", "quic").code == 0
    first, second = quic_requests(daemon)
    assert (first["resumed"], first["early_data"]) == (False, False)
    assert (second["resumed"], second["early_data"]) == (True, True), "0-RTT on the repeat"


def test_a_damaged_ticket_file_only_costs_a_full_handshake(
    daemon: Daemon, fluxctl: Fluxctl
) -> None:
    assert fluxctl("ls", daemon.url("/"), "--transport", "quic").code == 0
    tickets = daemon.home / "client-config" / "fluxctl" / "quic_tickets.json"
    tickets.write_text("{not json")
    assert fluxctl("ls", daemon.url("/"), "--transport", "quic").code == 0
    assert quic_requests(daemon)[-1]["resumed"] is False


def test_a_ticket_does_not_bypass_a_changed_certificate(daemon: Daemon, fluxctl: Fluxctl) -> None:
    assert fluxctl("ls", daemon.url("/"), "--transport", "quic").code == 0
    daemon.stop()
    subprocess.run(
        [str(BIN / "fluxd"), "certs", "init", "--dir", str(daemon.certs), "--force"],
        check=True,
        capture_output=True,
        env=_env(daemon.home),
    )
    daemon.start()  # a new daemon knows no ticket: full handshake, new certificate
    res = fluxctl("ls", daemon.url("/"), "--transport", "quic")
    assert res.code == 4
    assert "CHANGED" in res.stderr


def test_a_ticket_does_not_bypass_a_wrong_pin(daemon: Daemon, fluxctl: Fluxctl) -> None:
    assert fluxctl("ls", daemon.url("/"), "--transport", "quic").code == 0  # stores a ticket
    wrong = fluxctl("ls", daemon.url("/"), "--transport", "quic", "--pin", "sha256:" + "0" * 64)
    assert wrong.code == 4, "the resumed session is checked against the certificate it came from"
    pin = ("--transport", "quic", "--pin", str(daemon.fingerprint))
    # The refused attempt used up the ticket (each is honoured once) and its replacement was not
    # kept: the next command does a full handshake, the one after resumes again.
    assert fluxctl("ls", daemon.url("/"), *pin).code == 0
    assert quic_requests(daemon)[-1]["resumed"] is False
    assert fluxctl("ls", daemon.url("/"), *pin).code == 0
    assert quic_requests(daemon)[-1]["resumed"] is True
