"""fluxio.pathrules: the remote path rules live in the runtime, and fluxd serves the same ones.

The rules themselves are tested through fluxd in tests/daemon/test_paths.py; this pins that
there is one implementation, so the names fluxctl checks before sending are the names fluxd
accepts.
"""

from __future__ import annotations

import pytest

from fluxd.storage import paths
from fluxio import pathrules
from fluxproto.errors import PermissionDenied


def test_fluxd_uses_the_runtime_rules() -> None:
    assert paths.normalize is pathrules.normalize
    assert (paths.RESERVED, paths.MAX_DEPTH, paths.MAX_COMPONENT) == (
        pathrules.RESERVED,
        pathrules.MAX_DEPTH,
        pathrules.MAX_COMPONENT,
    )


def test_the_rules_need_no_daemon_module() -> None:
    assert pathrules.normalize("/a//b/./c") == "a/b/c"
    with pytest.raises(PermissionDenied, match=r"'\.\.'"):
        pathrules.normalize("a/../b")
