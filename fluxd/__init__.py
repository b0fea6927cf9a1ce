"""fluxd: the flux daemon."""

__version__ = "0.1.0"
