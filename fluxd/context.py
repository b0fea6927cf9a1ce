"""What every session of one daemon shares: config, storage, the door and the limits."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

from fluxio.buffers import ReceiveBudget

from .access import AccessLog
from .auth.gate import Authenticator
from .claims import UploadClaims
from .config import ServerConfig
from .events import Events
from .limits import Admission, Throttle
from .storage.base import Storage


@dataclass
class Shared:
    """One daemon's shared state; sessions hold a reference, never a copy."""

    config: ServerConfig
    storage: Storage
    pool: Executor
    claims: UploadClaims
    auth: Authenticator
    admission: Admission
    throttle: Throttle
    access: AccessLog
    #: Received chunk buffers of all connections (limits.memory); TCP readers pause beyond it.
    budget: ReceiveBudget
    #: Where upload, download, delete and corruption events go (off unless configured).
    events: Events = field(default_factory=Events)
