"""Storage for fluxd: the request and maintenance interfaces, their local implementation, and
staged files."""

from fluxio.oserrors import os_error, storage_errors
from fluxio.staging import ChunkData, StagedFile

from .base import (
    Backend,
    Collected,
    Download,
    EntryPage,
    Maintenance,
    Recovered,
    ScrubReport,
    Storage,
    Upload,
)
from .local import LocalDownload, LocalStorage, Manifest
from .local_upload import LocalUpload
from .paths import normalize, require_file_path, resolve

__all__ = [
    "Backend",
    "ChunkData",
    "Collected",
    "Download",
    "EntryPage",
    "LocalDownload",
    "LocalStorage",
    "LocalUpload",
    "Maintenance",
    "Manifest",
    "Recovered",
    "ScrubReport",
    "StagedFile",
    "Storage",
    "Upload",
    "normalize",
    "os_error",
    "require_file_path",
    "resolve",
    "storage_errors",
]
