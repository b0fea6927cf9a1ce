"""The transport-independent file service: callers, operations, transfer handles, access records."""

from .caller import Caller, Presence
from .files import FileService
from .transfers import (
    READ_AHEAD,
    AttachedUpload,
    DownloadHandle,
    UploadHandle,
    Version,
    read_verified,
)
from .work import KEEPALIVE

__all__ = [
    "KEEPALIVE",
    "READ_AHEAD",
    "AttachedUpload",
    "Caller",
    "DownloadHandle",
    "FileService",
    "Presence",
    "UploadHandle",
    "Version",
    "read_verified",
]
