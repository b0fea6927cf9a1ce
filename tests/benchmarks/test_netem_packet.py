"""benchmarks.netem.packet and the relay's NAT rebinding, against checksums computed in full."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.netem.model import Link, LinkSpec
from benchmarks.netem.packet import DST, SRC, TCP, UDP, addresses, ip, rewrite
from benchmarks.netem.relay import Relay, client_alias
from benchmarks.netem.topology import CLIENT_IP, SERVER_IP


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(src: bytes, dst: bytes, proto: int, payload: bytes, frag: int = 0) -> bytearray:
    """An IPv4 packet with a TCP or UDP header, every checksum computed from scratch."""
    if proto == UDP:
        l4 = bytearray(struct.pack("!HHHH", 4433, 50000, 8 + len(payload), 0) + payload)
        at = 6
    else:
        l4 = bytearray(struct.pack("!HHIIBBHHH", 7070, 50000, 1, 2, 5 << 4, 0x18, 512, 0, 0))
        l4 += payload
        at = 16
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    value = checksum(pseudo + bytes(l4))
    l4[at : at + 2] = struct.pack("!H", value or (0xFFFF if proto == UDP else 0))
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0, src, dst)
    )
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return header + l4


def valid(pkt: bytes) -> bool:
    src, dst, proto = pkt[12:16], pkt[16:20], pkt[9]
    if checksum(pkt[:20]) != 0:
        return False
    l4 = pkt[20:]
    return checksum(src + dst + struct.pack("!BBH", 0, proto, len(l4)) + l4) == 0


addrs = st.binary(min_size=4, max_size=4)


@given(
    src=addrs,
    dst=addrs,
    new=addrs,
    proto=st.sampled_from([TCP, UDP]),
    payload=st.binary(max_size=1400),
    which=st.sampled_from([SRC, DST]),
)
def test_rewriting_an_address_keeps_every_checksum_valid(
    src: bytes, dst: bytes, new: bytes, proto: int, payload: bytes, which: int
) -> None:
    pkt = packet(src, dst, proto, payload)
    assert valid(pkt)
    rewrite(pkt, which, new)
    assert addresses(pkt) == ((new, dst) if which == SRC else (src, new))
    assert valid(pkt)


def test_a_udp_packet_without_checksum_keeps_none() -> None:
    pkt = packet(ip(CLIENT_IP), ip(SERVER_IP), UDP, b"x" * 10)
    pkt[26:28] = b"\0\0"
    pkt[10:12] = b"\0\0"
    pkt[10:12] = struct.pack("!H", checksum(bytes(pkt[:20])))
    rewrite(pkt, SRC, ip("10.77.3.2"))
    assert pkt[26:28] == b"\0\0" and checksum(bytes(pkt[:20])) == 0


def test_a_later_fragment_gets_only_its_ip_header_fixed() -> None:
    pkt = packet(ip(CLIENT_IP), ip(SERVER_IP), UDP, b"y" * 64, frag=100)
    body = bytes(pkt[20:])
    rewrite(pkt, SRC, ip("10.77.3.2"))
    assert bytes(pkt[20:]) == body and checksum(bytes(pkt[:20])) == 0


def test_addresses_ignores_what_is_not_ipv4() -> None:
    assert addresses(b"\x60" + bytes(39)) is None  # IPv6
    assert addresses(b"\x45\x00") is None


def relay(spec: LinkSpec) -> tuple[Relay, list[float]]:
    clock = [0.0]
    return Relay(Link(spec), server_fd=10, client_fd=11, clock=lambda: clock[0]), clock


def queued(r: Relay) -> list[tuple[int, bytes]]:
    return [(fd, pkt) for _, _, fd, pkt in sorted(r._heap)]


def test_before_the_first_rebind_packets_pass_unchanged() -> None:
    r, _ = relay(LinkSpec(rebind_every=30))
    up = bytes(packet(ip(CLIENT_IP), ip(SERVER_IP), UDP, b"hello"))
    r.handle(up, upstream=True, t=29.0)
    assert queued(r) == [(10, up)]


def test_after_a_rebind_the_server_sees_a_new_address_and_old_ones_are_dropped() -> None:
    r, _ = relay(LinkSpec(rebind_every=30))
    alias = client_alias(2)
    up = bytes(packet(ip(CLIENT_IP), ip(SERVER_IP), TCP, b"data"))
    r.handle(up, upstream=True, t=61.0)
    ((fd, seen),) = queued(r)
    assert fd == 10 and addresses(seen) == (alias, ip(SERVER_IP)) and valid(seen)

    reply = bytes(packet(ip(SERVER_IP), alias, TCP, b"ack"))
    r.handle(reply, upstream=False, t=61.1)
    back = [pkt for fd, pkt in queued(r) if fd == 11]
    assert [addresses(p) for p in back] == [(ip(SERVER_IP), ip(CLIENT_IP))] and valid(back[0])

    for stale in (ip(CLIENT_IP), client_alias(1)):
        r.handle(bytes(packet(ip(SERVER_IP), stale, UDP, b"late")), upstream=False, t=61.2)
    assert r.counters.stale == 2 and len(queued(r)) == 2


def test_client_aliases_are_distinct_and_never_the_real_address() -> None:
    seen = {client_alias(e) for e in range(1, 251)}
    assert len(seen) == 250 and ip(CLIENT_IP) not in seen
    assert client_alias(0) == ip(CLIENT_IP)


def test_the_relay_schedules_by_the_link_and_counts() -> None:
    r, _ = relay(LinkSpec(rtt=0.02, duplicate=1.0))
    r.handle(b"\x45" + bytes(39), upstream=True, t=1.0)
    assert [t for t, *_ in r._heap] == [pytest.approx(1.01)] * 2
    assert r.counters.read == 1


def test_restarting_the_schedule_brings_back_the_real_address() -> None:
    r, clock = relay(LinkSpec(rebind_every=30))
    up = bytes(packet(ip(CLIENT_IP), ip(SERVER_IP), UDP, b"x"))
    r.handle(up, upstream=True, t=45.0)
    assert addresses(queued(r)[-1][1]) == (client_alias(1), ip(SERVER_IP))
    clock[0] = 45.0
    r.restart_schedule()
    r.link.schedule.restart(r.now())  # what run() does on its next turn
    r.handle(up, upstream=True, t=46.0)
    assert addresses(max(r._heap)[3]) == (ip(CLIENT_IP), ip(SERVER_IP))
