"""fluxd nodes on one S3 store (a real SeaweedFS): every operation, a node killed mid-upload and
another finishing it, two clients racing on one path through two nodes, and the store going
away mid-transfer."""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.engines import SeaweedFS
from fluxd.admin.server import CHECK_FRESH

from .conftest import BIN, Daemon, Fluxctl, _env, free_port, wait_for
from .test_admin import get, until
from .test_auth import FULL, issue
from .test_errors import one_line

MiB = 1024 * 1024
#: The daemon's default window: what a client may have in flight towards it.
WINDOW = 32 * MiB
#: The name the client uses for two nodes: every node's certificate carries it.
NAME = "localhost:7070"

pytestmark = pytest.mark.timeout(240)


def s3_config(path: Path, engine: SeaweedFS, prefix: str, lease_ttl: str = "3s") -> Path:
    path.write_text(
        "[storage]\n"
        'backend = "s3"\n'
        f'endpoint = "{engine.endpoint}"\n'
        f'bucket = "{engine.bucket}"\n'
        f'prefix = "{prefix}"\n'
        f'region = "{engine.region}"\n'
        f'lease_ttl = "{lease_ttl}"\n'
    )
    return path


def creds(engine: SeaweedFS) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": engine.access_key, "AWS_SECRET_ACCESS_KEY": engine.secret_key}


@pytest.fixture
def s3_nodes(
    make_daemon: Callable[..., Daemon], s3_engine: SeaweedFS, s3_prefix: str, tmp_path: Path
) -> Callable[..., list[Daemon]]:
    """Makes `n` fluxd nodes on one store and prefix, sharing one CA and token key."""

    def make(
        n: int = 1, engine: SeaweedFS = s3_engine, env: dict[str, str] | None = None
    ) -> list[Daemon]:
        config = s3_config(tmp_path / "s3.toml", engine, s3_prefix)
        first = make_daemon("--config", str(config), name="n0", env=creds(engine) | (env or {}))
        nodes = [first]
        for i in range(1, n):
            args = ("--config", str(config), "--certs", str(first.certs))
            nodes.append(make_daemon(*args, name=f"n{i}", env=creds(engine)))
        return nodes

    return make


def uploading(engine: SeaweedFS) -> bool:
    """Whether some multipart upload in the engine's bucket holds a part already."""
    bucket = engine.bucket
    # Closed at once: a poll makes one per call, and one left open for the collector warns.
    with contextlib.closing(engine.client()) as client:
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            parts = client.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            if parts.get("Parts"):
                return True
    return False


def ca(node: Daemon) -> tuple[str, str]:
    return ("--ca", str(node.certs / "ca.pem"))


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(40 * MiB + 123))
    return path


def test_every_operation_on_s3(
    s3_nodes: Callable[..., list[Daemon]], fluxctl: Fluxctl, big: Path, tmp_path: Path
) -> None:
    (node,) = s3_nodes()
    sent = fluxctl("send", *ca(node), "--json", str(big), node.url("/a/big.bin"))
    assert sent.code == 0, sent.stderr
    back = tmp_path / "back.bin"
    got = fluxctl("recv", *ca(node), "--json", node.url("/a/big.bin"), str(back))
    assert got.code == 0, got.stderr
    assert filecmp.cmp(big, back, shallow=False)
    assert got.json["digest"] == sent.json["digest"]
    listed = fluxctl("ls", *ca(node), "--json", node.url("/a/"))
    assert listed.code == 0, listed.stderr
    assert "big.bin" in listed.stdout
    stat = fluxctl("stat", *ca(node), "--json", node.url("/a/big.bin"))
    assert stat.code == 0 and str(big.stat().st_size) in stat.stdout
    assert fluxctl("rm", *ca(node), node.url("/a/big.bin")).code == 0
    gone = fluxctl("stat", *ca(node), node.url("/a/big.bin"))
    assert gone.code != 0 and "no such" in gone.stderr


def test_a_tree_round_trip_on_s3(
    s3_nodes: Callable[..., list[Daemon]], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    (node,) = s3_nodes()
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(11 * MiB))
    (src / "sub" / "deeper" / "c").write_bytes(b"")
    (src / "link").symlink_to("a.txt")
    sent = fluxctl("send", "-r", *ca(node), str(src), node.url("/tree"))
    assert sent.code == 0, sent.stderr
    dst = tmp_path / "dst"
    got = fluxctl("recv", "-r", *ca(node), node.url("/tree"), str(dst))
    assert got.code == 0, got.stderr
    for rel in ("a.txt", "sub/b.bin", "sub/deeper/c"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert (dst / "empty").is_dir()
    assert os.readlink(dst / "link") == "a.txt"
    again = fluxctl("send", "-r", *ca(node), "--json", str(src), node.url("/tree"))
    assert again.code == 0, again.stderr


def test_a_node_killed_mid_upload_and_another_finishes_it(
    s3_nodes: Callable[..., list[Daemon]], fluxctl: Fluxctl, tmp_path: Path
) -> None:
    """One command, two nodes behind one name: the first dies after two durable batches, the
    run goes on through the second (once the dead node's lease lapses) and resends at most
    what was in flight: the daemon's window."""
    first, second = s3_nodes(2, env={"FLUX_CRASH_AT": "chunks-durable:2"})
    config = fluxctl.home / "client-config" / "fluxctl" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    nodes = f'["127.0.0.1:{first.port}", "127.0.0.1:{second.port}"]'
    config.write_text(f'[servers."{NAME}"]\nnodes = {nodes}\n')
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(64 * MiB))
    url = f"flux://{NAME}/f.bin"
    done = fluxctl("send", *ca(first), "--transport", "tcp", "--json", str(src), url)
    assert done.code == 0, done.stderr
    assert first.proc is not None and first.proc.wait(30) == -signal.SIGKILL
    result = done.json
    assert result["node"] == f"127.0.0.1:{second.port}"
    assert result["retries"] >= 1
    assert result["sent"] - src.stat().st_size <= WINDOW  # only what was in flight went again
    back = tmp_path / "back.bin"
    assert fluxctl("recv", *ca(first), url, str(back)).code == 0
    assert filecmp.cmp(src, back, shallow=False)


def test_two_clients_two_nodes_one_path_one_wins(
    s3_nodes: Callable[..., list[Daemon]],
    s3_engine: SeaweedFS,
    fluxctl: Fluxctl,
    big: Path,
    tmp_path: Path,
) -> None:
    first, second = s3_nodes(2)
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(big.stat().st_size))
    alice, bob = issue(first, "alice", *FULL), issue(first, "bob", *FULL)
    slow = fluxctl.spawn("send", *ca(first), "--token", alice, str(big), first.url("/p"))
    wait_for(lambda: uploading(s3_engine) or slow.poll() is not None, what="the first upload")
    racer = fluxctl("send", *ca(first), "--token", bob, str(other), second.url("/p"))
    _, err = slow.communicate(timeout=120)
    stored = tmp_path / "stored.bin"
    assert fluxctl("recv", *ca(first), "--token", bob, second.url("/p"), str(stored)).code == 0
    winners = [src for src in (big, other) if filecmp.cmp(src, stored, shallow=False)]
    assert len(winners) == 1  # one whole file, never a mix
    if racer.code != 0:  # refused while alice held the path, as on one node
        assert slow.returncode == 0, err
        assert "another session" in racer.stderr and winners == [big]


def test_the_store_goes_away_mid_transfer(
    s3_nodes: Callable[..., list[Daemon]],
    s3_private_engine: SeaweedFS,
    fluxctl: Fluxctl,
    big: Path,
    tmp_path: Path,
) -> None:
    (node,) = s3_nodes(engine=s3_private_engine)
    sending = fluxctl.spawn("send", *ca(node), "--json", str(big), node.url("/f.bin"))
    wait_for(lambda: uploading(s3_private_engine) or sending.poll() is not None, what="parts")
    s3_private_engine.stop()
    wait_for(lambda: bool(node.events("access")) or sending.poll() is not None, what="a failure")
    s3_private_engine.start()
    _, err = sending.communicate(timeout=180)
    assert sending.returncode == 0, err
    back = tmp_path / "back.bin"
    assert fluxctl("recv", *ca(node), node.url("/f.bin"), str(back)).code == 0
    assert filecmp.cmp(big, back, shallow=False)


def _serve(config: Path, home: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [str(BIN / "fluxd"), "serve", "--config", str(config), "--listen", "127.0.0.1:0"]
    cmd += ["--certs", str(home / "certs"), "--root", str(home / "root")]
    return subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env=_env(home) | env, start_new_session=True
    )


@pytest.mark.parametrize(
    ("change", "env", "says"),
    [
        ({"bucket": "no-such-bucket"}, {}, "no bucket 'no-such-bucket'"),
        ({}, {"AWS_SECRET_ACCESS_KEY": "wrong"}, "refused the credentials"),
        ({"backend": "s3x"}, {}, 'storage.backend must be "local" or "s3"'),
        ({"bucket": ""}, {}, "needs storage.bucket"),
    ],
)
def test_a_bad_store_is_refused_at_start_with_one_line(
    s3_engine: SeaweedFS,
    s3_prefix: str,
    tmp_path: Path,
    change: dict[str, str],
    env: dict[str, str],
    says: str,
) -> None:
    config = s3_config(tmp_path / "s3.toml", s3_engine, s3_prefix)
    text = config.read_text()
    for key, value in change.items():
        text = "\n".join(
            f'{key} = "{value}"' if line.startswith(f"{key} =") else line
            for line in text.splitlines()
        )
    config.write_text(text)
    proc = _serve(config, tmp_path, creds(s3_engine) | env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert says in one_line(err, prog="fluxd")


def test_a_store_that_does_not_answer_is_waited_for(
    s3_engine: SeaweedFS, s3_prefix: str, tmp_path: Path
) -> None:
    config = s3_config(tmp_path / "s3.toml", s3_engine, s3_prefix)
    closed = free_port()
    config.write_text(config.read_text().replace(s3_engine.endpoint, f"http://127.0.0.1:{closed}"))
    proc = _serve(config, tmp_path, creds(s3_engine))
    try:
        assert proc.stderr is not None
        line = json.loads(proc.stderr.readline())
        assert line["event"] == "store-unreachable" and line["retry_in"] == 1.0
        assert proc.poll() is None  # still waiting, not crashed
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def test_a_corrupt_object_is_never_served_and_scrub_finds_it(
    s3_nodes: Callable[..., list[Daemon]],
    s3_engine: SeaweedFS,
    s3_client: Any,
    s3_prefix: str,
    fluxctl: Fluxctl,
    big: Path,
    tmp_path: Path,
) -> None:
    (node,) = s3_nodes()
    assert fluxctl("send", *ca(node), str(big), node.url("/f.bin")).code == 0
    client, bucket = s3_client, s3_engine.bucket
    (data,) = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix=s3_prefix + "data/")["Contents"]
    ]
    rotten = bytearray(big.read_bytes())
    rotten[len(rotten) // 2] ^= 1
    client.put_object(Bucket=bucket, Key=data, Body=bytes(rotten))
    back = tmp_path / "back.bin"
    got = fluxctl("recv", *ca(node), "--retry-for", "0", node.url("/f.bin"), str(back))
    assert got.code == 3 and "corrupt" in one_line(got.stderr)
    assert not back.exists()
    config = s3_config(tmp_path / "scrub.toml", s3_engine, s3_prefix)
    scrub = subprocess.run(
        [str(BIN / "fluxd"), "scrub", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=_env(tmp_path) | creds(s3_engine),
        timeout=120,
        check=False,
    )
    assert scrub.returncode == 3, scrub.stderr
    assert json.loads(scrub.stdout)["corrupt"] == ["f.bin"]


def test_readiness_follows_the_store(
    s3_nodes: Callable[..., list[Daemon]], s3_private_engine: SeaweedFS
) -> None:
    """/readyz asks the store itself: 503 naming the storage check while it is down, 200 once
    it is back (the daemon keeps running through both)."""
    (node,) = s3_nodes(engine=s3_private_engine)
    assert get(node, "/readyz") == (200, "ok\n")
    s3_private_engine.stop()
    # The answer of a check younger than CHECK_FRESH stands meanwhile, then the next one's.
    body = until(node, "/readyz", 503, CHECK_FRESH + 30)[1]
    assert body.startswith("storage: ") and len(body.splitlines()) == 1, body
    assert f"checking bucket {s3_private_engine.bucket!r}" in body, body
    assert get(node, "/livez") == (200, "ok\n"), "the loop still answers"
    s3_private_engine.start()
    assert until(node, "/readyz", 200, CHECK_FRESH + 30)[1] == "ok\n"
