# Bandwidth limits: the token bucket both fluxd's [limits] rate and fluxctl's --bwlimit use.
"""A token bucket that paces bytes, and the wait a sender or receiver takes before passing them.

The limit acts through flow control: a sender waits before it sends, a receiver before it takes
the next chunk (so it acknowledges none meanwhile and the peer's window fills). Nothing is
buffered beyond the windows the protocol already enforces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Burst a bucket allows after idling, in seconds of its rate: small, so a measured rate over a
#: few seconds is the configured one, and large enough to pass one chunk without a wait.
BURST_SECONDS = 0.25

#: Charges n bytes and returns the seconds to wait before they may pass.
Pace = Callable[[int], float]

__all__ = ["BURST_SECONDS", "Pace", "TokenBucket", "paced"]


class TokenBucket:
    """A token bucket of `rate` bytes/s that may go into debt.

    `charge(n)` takes n bytes at once and says how long to wait to pay off any debt, so over
    any period the bytes passed are at most rate x period + the burst, whatever the sizes.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = self.rate * BURST_SECONDS
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def charge(self, n: int) -> float:
        """Take `n` bytes; return the seconds to wait before they may pass (0 if none)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


async def paced(pace: Pace | None, nbytes: int) -> None:
    """Charge `nbytes` to `pace` (None: no limit) and wait as long as it says."""
    if pace is not None and (wait := pace(nbytes)) > 0:
        await asyncio.sleep(wait)
