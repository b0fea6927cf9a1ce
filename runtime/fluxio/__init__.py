"""fluxio: the runtime fluxd and fluxctl share, the I/O half beside the sans-IO `fluxproto`.

Transports (TCP+TLS and QUIC channels), chunk flow (windows, acks, group commit), buffers, staged
files with their journal, TLS helpers, the values both command lines parse (sizes, durations,
HOST:PORT) and their common error boundary. It imports `fluxproto` and nothing of `fluxd` or
`fluxctl`, which both build on it.
"""
