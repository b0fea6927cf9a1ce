"""Storage for fluxd: the interface sessions use, its local implementation, and staged files."""

from fluxio.oserrors import os_error, storage_errors
from fluxio.staging import ChunkData, StagedFile

from .base import Download, EntryPage, Storage, Upload
from .local import LocalDownload, LocalStorage, Manifest
from .local_upload import LocalUpload
from .paths import normalize, require_file_path, resolve

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
