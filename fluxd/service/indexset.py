"""A set of chunk indices as a bitmap: one bit per chunk, where a set of ints takes ~60 bytes."""

from __future__ import annotations

__all__ = ["IndexSet"]


class IndexSet:
    """Chunk indices seen so far; grows to the highest one added."""

    __slots__ = ("_bits",)

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, index: int) -> bool:
        """Add `index`; True if it was not in the set before."""
        byte, bit = divmod(index, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        if self._bits[byte] >> bit & 1:
            return False
        self._bits[byte] |= 1 << bit
        return True
