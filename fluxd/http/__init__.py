"""HTTP downloads: GET and HEAD of stored files over HTTPS (`[http] listen`)."""

from .listener import HttpListener

__all__ = ["HttpListener"]
