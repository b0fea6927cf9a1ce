"""Scenario `cluster`, its pure parts: options, the nodes' config, the failover's command and the
client's config naming both nodes, the bytes-read sampler, and the rendered section (nothing
here starts an engine)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.measure import MIB, ReadBytesSampler
from benchmarks.peers.flux import toml_tables
from benchmarks.scenarios.cluster import (
    ENGINES,
    SERVICE,
    Nodes,
    add_arguments,
    client_config,
    failover_command,
    size_or_none,
)
from benchmarks.scenarios.cluster_report import (
    cpu_per_gb,
    failover_row,
    flat,
    in_flight,
    render,
    resent,
    within_window,
)
from benchmarks.scenarios.common import comma_choices
from fluxctl.nodes import configured_nodes
from fluxd.config import load_config


class FakeEngine:
    name = "seaweedfs"
    endpoint = "http://127.0.0.1:9"
    bucket = "flux"
    region = "us-east-1"
    access_key = "AK"
    secret_key = "SK"


def test_options_name_engines_and_sizes_that_can_be_dropped() -> None:
    engines = comma_choices(ENGINES)
    assert engines("ceph, seaweedfs") == ["seaweedfs", "ceph"]
    with pytest.raises(argparse.ArgumentTypeError):
        engines("minio")
    with pytest.raises(argparse.ArgumentTypeError):
        engines(" , ")
    assert comma_choices(ENGINES, none_ok=True)("none") == []
    assert size_or_none(" 8M") == "8M"
    assert size_or_none("none") is None
    with pytest.raises(ValueError):
        size_or_none("eight")
    assert Nodes("tcp", None, 20).send_options == []
    assert Nodes("tcp", "8M", 20).send_options == ["--chunk-size", "8M"]
    assert Nodes("tcp", None, 20).serve_options == []
    assert Nodes("tcp", None, 20, "64M").serve_options == ["--window", "64M"]


def test_the_scenario_lets_fluxctl_pick_its_chunks_and_fluxd_keep_its_window() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.chunk_size, args.window) == (None, "32M")
    args = parser.parse_args(["--chunk-size", "8M", "--window", "128M"])
    assert (args.chunk_size, args.window) == ("8M", "128M")


def test_a_nodes_config_is_toml_fluxd_accepts(tmp_path: Path) -> None:
    nodes = Nodes("tcp", "8M", 7.5, "64M")
    node = nodes.node(FakeEngine(), tmp_path / "n", "fluxd-s3", crash="x:1")  # type: ignore[arg-type]
    assert node.serve_options == ["--window", "64M"]
    assert node.daemon_env == {
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "FLUX_CRASH_AT": "x:1",
    }
    path = tmp_path / "fluxd.toml"
    path.write_text(toml_tables({"limits": {}, "storage": node.storage}))
    assert "[limits]" not in path.read_text()
    storage = load_config(path, {}).storage
    assert (storage.backend, storage.bucket, storage.prefix) == ("s3", "flux", "nodes/")
    assert (storage.endpoint, storage.lease_ttl) == ("http://127.0.0.1:9", 7.5)


def test_the_failover_is_one_command_to_a_name_the_config_leads_to_both_nodes(
    tmp_path: Path,
) -> None:
    nodes = Nodes("tcp", None, 20)
    a = nodes.node(FakeEngine(), tmp_path / "a", "node-a", certs=tmp_path / "certs")  # type: ignore[arg-type]
    b = nodes.node(FakeEngine(), tmp_path / "b", "node-b", certs=tmp_path / "certs")  # type: ignore[arg-type]
    a.port, b.port = 1001, 1002
    argv = failover_command([a, b], tmp_path / "f.bin", "f.bin")
    assert f"flux://{SERVICE}/bench/f.bin" in argv
    assert not any("1001" in x or "1002" in x for x in argv)
    assert "--retry-for" not in argv and "--chunk-size" not in argv
    assert argv[argv.index("--ca") + 1] == str(tmp_path / "certs" / "ca.pem")
    config = tmp_path / "config.toml"
    config.write_text(client_config([a, b]))
    host, _, port = SERVICE.partition(":")
    assert configured_nodes(host, int(port), config) == (("127.0.0.1", 1001), ("127.0.0.1", 1002))


def test_the_sampler_counts_bytes_read_since_it_started(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(3 * MIB))
    with ReadBytesSampler(os.getpid(), interval=0.001) as sampler:
        path.read_bytes()
        sampler._sample()  # the last sample, as the thread would take it
    assert 3 * MIB <= sampler.read_bytes < 4 * MIB


def transfer(tool: str, mb_s: float, size: int = 1 << 30, **details: Any) -> dict[str, Any]:
    seconds = size / mb_s / 1e6
    return {
        "tool": tool,
        "size": size,
        "seconds": seconds,
        "mb_per_s": mb_s,
        "server_rss_kib": 100 * 1024,
        "client_rss_kib": 90 * 1024,
        "details": details,
    }


def stats(v: float) -> dict[str, float]:
    return {"median": v, "min": v, "max": v}


def failover(**changes: Any) -> dict[str, Any]:
    report = {"ok": True, "bytes": 256 * MIB, "sent": 280 * MIB, "skipped": 0}
    return {
        "size": 256 * MIB,
        "kill_at": "chunks-durable:4",
        "lease_ttl": 20.0,
        "window": 32 * MIB,
        "report": report | {"retries": 9, "node": "127.0.0.1:1002"},
        "nodes": {"A": "127.0.0.1:1001", "B": "127.0.0.1:1002"},
        "read_by_a": 80 * MIB,
        "store_at_death": {
            "parts": 9, "part_bytes": 72 * MIB, "chunk_size": 8 * MIB, "chunk_keys": 7
        },
        "seconds": 27.5,
        "failover_seconds": 27.7,
    } | changes  # fmt: skip


def test_in_flight_is_what_node_a_read_beyond_what_it_held() -> None:
    assert in_flight(failover()) == (24.0, 3.0)
    assert in_flight(failover(store_at_death={})) == (80.0, None)
    assert in_flight(failover(read_by_a=10)) == (0.0, 0.0)  # never negative
    row = failover_row("ceph", failover())
    assert row[:5] == ["Ceph RGW", "256 MiB", "32", "20", "56"]
    assert row[5] == "24.0 (≈ 3.0 chunks)" and row[6] == "9 / 7" and row[7] == "280"
    assert row[8:] == ["24.0 (≈ 3.0 chunks)", "9", "B", "27.7"]


def test_resent_is_sent_beyond_the_size_and_at_most_the_window() -> None:
    assert resent(failover()) == 24 * MIB
    assert within_window(failover()) is True
    assert within_window(failover(window=16 * MIB)) is False
    assert within_window(failover(window=None)) is None


def test_peak_rss_is_flat_per_backend_within_16_mib() -> None:
    rows = [
        {"backend": "s3", "size": 1 << 28, "transfer": {"server_rss_kib": 100 * 1024}},
        {"backend": "s3", "size": 1 << 30, "transfer": {"server_rss_kib": 116 * 1024}},
        {"backend": "local", "size": 1 << 30, "transfer": {"server_rss_kib": 130 * 1024}},
        {"backend": "local", "size": 1 << 28, "transfer": {"server_rss_kib": 90 * 1024}},
    ]
    assert flat(rows) == {"s3": True, "local": False}


def test_cpu_per_gb_is_the_median_over_the_runs_that_have_it() -> None:
    runs = [
        transfer("fluxd-s3", 50, server_cpu_seconds=2.0),
        transfer("fluxd-s3", 50, server_cpu_seconds=4.0),
        transfer("fluxd-s3", 50),
    ]
    assert cpu_per_gb(runs) == pytest.approx(3.0 / 1.073741824)
    assert cpu_per_gb([transfer("fluxd-s3", 50)]) is None


def data() -> dict[str, Any]:
    boto = transfer("boto3", 100, report={"part_size": 8 * MIB, "concurrency": 10})
    flux = transfer("fluxd-s3", 70, server_cpu_seconds=5.0)
    rss = {"server_rss_kib": 120 * 1024, "client_rss_kib": 90 * 1024, "mb_per_s": 60.0}
    engine = {
        "engine": "seaweedfs",
        "version": "4.48",
        "throughput": {
            "size": 1 << 30,
            "reps": 3,
            "summary": {
                "fluxd-s3": {"seconds": stats(15.3), "mb_per_s": stats(70.0)},
                "boto3": {"seconds": stats(10.7), "mb_per_s": stats(100.0)},
            },
            "ratio": 0.7,
            "runs": [flux, boto],
        },
        "failover": failover(),
        "memory": [
            {"backend": "S3 (seaweedfs)", "size": 1 << 28, "transfer": rss},
            {"backend": "S3 (seaweedfs)", "size": 1 << 30, "transfer": rss},
        ],
    }
    machine = {
        "cpu": "cpu", "cores": "2", "kernel": "6", "python": "3.11", "commit": "abc",
        "date": "today", "load_at_start": "1.0", "load_at_end": "2.0", "filesystem": "ext4",
    }  # fmt: skip
    setup = {"transport": "tcp", "chunk_size": None, "window": "32M", "part_size": 8 * MIB}
    setup["boto3"] = "1.44"
    return {"machine": machine, "setup": setup, "engines": [engine], "memory_local": []}


def test_the_section_has_ratio_verdict_failover_and_memory() -> None:
    text = render(data())
    assert text.startswith("## cluster: ")
    assert "SeaweedFS: 4.48; boto3 1.44" in text
    assert "**0.70x** (target ≥ 0.8x: **missed**)" in text
    assert "boto3 upload_file (8 MiB parts, 10 threads)" in text
    assert "fluxctl → fluxd → S3 (TCP + TLS 1.3, fluxctl's chunks, window 32M)" in text
    assert "4.7 s per GB stored" in text
    assert "| SeaweedFS | 256 MiB | 32 | 20 | 56 | 24.0 (≈ 3.0 chunks) |" in text
    assert "one command finishes on B" in text
    assert "Resent at most the chunks in flight (≤ the nodes' window): SeaweedFS **met**" in text
    assert "S3 (seaweedfs) **met**" in text
    assert "3 times each" in text
