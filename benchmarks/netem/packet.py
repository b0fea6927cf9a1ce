"""IPv4 address rewriting for the emulated NAT rebinding, with incremental checksum updates.

Only what the relay needs: read the addresses of an IPv4 packet, and replace one of them while
keeping the IP header checksum and the TCP or UDP checksum (whose pseudo-header covers both
addresses) valid, by RFC 1624's incremental update instead of summing the whole packet again.
"""

from __future__ import annotations

import ipaddress

TCP, UDP = 6, 17
SRC, DST = 12, 16  # offsets of the addresses in the IPv4 header


def addresses(packet: bytes | bytearray) -> tuple[bytes, bytes] | None:
    """(source, destination) of an IPv4 packet; None for anything else (IPv6, runts)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return bytes(packet[SRC : SRC + 4]), bytes(packet[DST : DST + 4])


def rewrite(packet: bytearray, offset: int, new: bytes) -> None:
    """Replace the 4-byte address at `offset` (SRC or DST) in place, fixing checksums."""
    old = bytes(packet[offset : offset + 4])
    if old == new:
        return
    packet[offset : offset + 4] = new
    _adjust(packet, 10, old, new)  # IPv4 header checksum
    ihl = (packet[0] & 0x0F) * 4
    first_fragment = int.from_bytes(packet[6:8], "big") & 0x1FFF == 0
    if not first_fragment:
        return  # no transport header in this fragment
    proto = packet[9]
    if proto == TCP and len(packet) >= ihl + 18:
        _adjust(packet, ihl + 16, old, new)
    elif proto == UDP and len(packet) >= ihl + 8 and packet[ihl + 6 : ihl + 8] != b"\0\0":
        _adjust(packet, ihl + 6, old, new, udp=True)  # (0: the sender computed no checksum)


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _adjust(packet: bytearray, at: int, old: bytes, new: bytes, udp: bool = False) -> None:
    # RFC 1624 eq. 3: HC' = ~(~HC + ~m + m'), in ones' complement arithmetic, per 16-bit word.
    total = ~int.from_bytes(packet[at : at + 2], "big") & 0xFFFF
    for i in (0, 2):
        total += ~int.from_bytes(old[i : i + 2], "big") & 0xFFFF
        total += int.from_bytes(new[i : i + 2], "big")
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF
    if udp and checksum == 0:
        checksum = 0xFFFF  # UDP sends a computed zero as all ones
    packet[at : at + 2] = checksum.to_bytes(2, "big")
