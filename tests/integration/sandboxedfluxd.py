"""fluxd under two of the unit's restrictions, applied the way systemd applies them, for the
test that the daemon works inside its own unit: `python sandboxedfluxd.py SYSCALLS serve ...`.

- MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE (Linux 6.3+), which refuses a mapping
  that is writable and executable, or that becomes executable, as systemd's seccomp rule does.
- SystemCallFilter=: a seccomp filter (libseccomp, as systemd uses) that allows only the
  syscalls named in the file SYSCALLS (one per line) and fails every other with EPERM.

Both hold across the exec of fluxd and for every thread it starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


def restrict(syscalls: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
    ]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = seccomp.seccomp_init(scmp_act_errno(errno.EPERM))
    for name in syscalls:
        nr = seccomp.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:  # names of other architectures resolve to a negative pseudo-number
            seccomp.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
    if seccomp.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        allowed = f.read().split()
    restrict(allowed)
    fluxd = os.path.join(os.path.dirname(sys.executable), "fluxd")
    os.execv(fluxd, [fluxd, *sys.argv[2:]])
