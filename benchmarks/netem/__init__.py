"""Link emulator: two network namespaces joined by a userspace relay (see topology.py)."""
