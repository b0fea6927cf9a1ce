"""Several fluxd nodes behind one name (README "Running several nodes"): two real daemons on
loopback, listed as the nodes of one name in the client's config file, with one CA and one
store between them. A node down at the start is passed over; a node that dies mid-send (it
kills itself at a crash point: no clock decides when) leaves the same command to finish on the
other node, resuming what the first made durable."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Daemon, Fluxctl, Result
from .test_errors import one_line

CHUNK = 64 * 1024
SIZE = 64 * CHUNK - 1000
#: The name the client uses: every node's certificate carries it (fluxd's default names do).
NAME = "localhost:7070"


@dataclass
class Nodes:
    first: Daemon
    second: Daemon
    data: bytes
    src: Path

    @property
    def ca(self) -> str:
        return str(self.first.certs / "ca.pem")

    def address(self, node: Daemon) -> str:
        return f"127.0.0.1:{node.port}"


def two_nodes(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path, **first_env: str
) -> Nodes:
    """Two daemons sharing one CA and certificate and one store (the second's root is the
    first's), listed in that order as the nodes of NAME in the client's config file."""
    first = make_daemon(name="n1", env=first_env)
    (tmp_path / "n2").mkdir()
    shutil.copytree(first.certs, tmp_path / "n2" / "certs")
    (tmp_path / "n2" / "root").symlink_to(first.root)
    second = make_daemon(name="n2")
    config = fluxctl.home / "client-config" / "fluxctl" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    nodes = f'["127.0.0.1:{first.port}", "127.0.0.1:{second.port}"]'
    config.write_text(f'[servers."{NAME}"]\nnodes = {nodes}\n')
    src = tmp_path / "src.bin"
    data = os.urandom(SIZE)
    src.write_bytes(data)
    return Nodes(first, second, data, src)


def send(fluxctl: Fluxctl, nodes: Nodes, path: str, *extra: str) -> Result:
    return fluxctl(
        "send", str(nodes.src), f"flux://{NAME}/{path}", "--ca", nodes.ca,
        "--chunk-size", "64K", "--json", *extra,
    )  # fmt: skip


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_a_node_down_at_the_start_is_passed_over(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    nodes = two_nodes(make_daemon, fluxctl, tmp_path)
    nodes.first.kill()
    sent = send(fluxctl, nodes, "f.bin", "--transport", transport)
    assert sent.code == 0, sent.stderr
    assert sent.json["node"] == nodes.address(nodes.second)
    assert sent.json["retries"] == 0, "passing over a node that is down is no retry"
    assert (nodes.second.root / "f.bin").read_bytes() == nodes.data


def test_a_tree_send_passes_over_a_node_that_is_down(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    nodes = two_nodes(make_daemon, fluxctl, tmp_path)
    nodes.first.kill()
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(nodes.src, tree / "f.bin")
    url = f"flux://{NAME}/t"
    sent = fluxctl("send", "-r", str(tree), url, "--ca", nodes.ca, "--json", "--chunk-size", "64K")
    assert sent.code == 0, sent.stderr
    assert (sent.json["node"], sent.json["files"]) == (nodes.address(nodes.second), 1)
    assert (nodes.second.root / "t" / "f.bin").read_bytes() == nodes.data


def test_every_node_down_is_one_line_naming_each(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    nodes = two_nodes(make_daemon, fluxctl, tmp_path)
    nodes.first.kill()
    nodes.second.kill()
    sent = send(fluxctl, nodes, "f.bin", "--transport", "tcp")
    assert sent.code == 5
    line = one_line(sent.stderr)
    assert f"no node of {NAME} answers" in line
    for node in (nodes.first, nodes.second):
        assert nodes.address(node) in line


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_a_node_killed_mid_send_leaves_the_send_to_the_next(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path, transport: str
) -> None:
    """The first node kills itself (SIGKILL) once two batches of chunks are durable; the same
    command goes on to the second node and resumes there from the shared store."""
    nodes = two_nodes(make_daemon, fluxctl, tmp_path, FLUX_CRASH_AT="chunks-durable:2")
    sent = send(fluxctl, nodes, "f.bin", "--transport", transport)
    assert nodes.first.proc is not None
    assert nodes.first.proc.wait(timeout=30) == -signal.SIGKILL, "the first node died"
    assert sent.code == 0, sent.stderr
    out = sent.json
    assert out["node"] == nodes.address(nodes.second)
    assert out["retries"] >= 1
    assert (nodes.second.root / "f.bin").read_bytes() == nodes.data
    [stored] = [r for r in nodes.second.events("access") if r["op"] == "upload"]
    assert stored["result"] == "ok"
    # The store is shared: the second node took over what the first made durable.
    assert stored["bytes"] <= SIZE - CHUNK, "what the first node made durable was sent again"


def test_a_recv_passes_over_a_node_that_is_down(
    make_daemon: Callable[..., Daemon], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    nodes = two_nodes(make_daemon, fluxctl, tmp_path)
    assert send(fluxctl, nodes, "f.bin", "--transport", "tcp").code == 0
    nodes.first.kill()
    out = tmp_path / "out.bin"
    got = fluxctl("recv", f"flux://{NAME}/f.bin", str(out), "--ca", nodes.ca, "--json")
    assert got.code == 0, got.stderr
    assert got.json["node"] == nodes.address(nodes.second)
    assert out.read_bytes() == nodes.data
