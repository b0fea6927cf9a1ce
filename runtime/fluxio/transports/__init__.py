"""Transport adapters: TCP+TLS (tcp.py) and QUIC (quic.py), both behind the same channel API."""

#: The QUIC datagram size both ends use unless told otherwise: a 1500-byte MTU minus IPv6 and
#: UDP headers. Here, not in quic.py, so a TCP-only client never imports aioquic.
DEFAULT_DATAGRAM_SIZE = 1452
