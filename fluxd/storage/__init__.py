"""Storage for fluxd: the interface sessions use, its local implementation, and staged files."""

from .base import Download, EntryPage, Storage, Upload
from .local import LocalDownload, LocalStorage, Manifest
from .local_upload import LocalUpload
from .oserrors import os_error, storage_errors
from .paths import normalize, require_file_path, resolve
from .staging import ChunkData, StagedFile

__all__ = [
    "ChunkData",
    "Download",
    "EntryPage",
    "LocalDownload",
    "LocalStorage",
    "LocalUpload",
    "Manifest",
    "StagedFile",
    "Storage",
    "Upload",
    "normalize",
    "os_error",
    "require_file_path",
    "resolve",
    "storage_errors",
]
