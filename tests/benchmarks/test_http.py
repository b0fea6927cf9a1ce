"""Scenario `http`, its pure parts: curl's command and its result line, the log reader's
listening events, the daemon's `[http]` table, and the rendered section (nothing here starts a
daemon)."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from typing import Any

import pytest

from benchmarks import BenchError
from benchmarks.peers.flux import toml_tables
from benchmarks.peers.process import LogReader
from benchmarks.scenarios import SCENARIOS
from benchmarks.scenarios.http import curl_argv, curl_result
from benchmarks.scenarios.http_report import CURL, FLUX, render

GIB = 1 << 30


def test_registered() -> None:
    assert SCENARIOS["http"].HELP


def test_curl_goes_to_loopback_under_a_certified_name_and_checks_the_ca() -> None:
    argv = curl_argv("curl", Path("certs/ca.pem"), 8443, "/bench/http.bin", Path("out/c.bin"))
    assert argv[-1] == "https://localhost:8443/bench/http.bin"
    assert argv[argv.index("--resolve") + 1] == "localhost:8443:127.0.0.1"
    assert argv[argv.index("--cacert") + 1] == "certs/ca.pem"
    assert argv[argv.index("--output") + 1] == "out/c.bin"
    assert "--fail" in argv
    assert "--insecure" not in argv and "-k" not in argv


def test_curl_result() -> None:
    assert curl_result("200 1073741824") == (200, GIB)
    assert curl_result("206 5\n") == (206, 5)


@pytest.mark.parametrize("bad", ["", "200", "200 x", "200 1 2", "OK 5"])
def test_curl_result_refuses_anything_else(bad: str) -> None:
    with pytest.raises(BenchError):
        curl_result(bad)


def test_http_table_in_the_daemon_config() -> None:
    text = toml_tables({"limits": {}, "storage": {}, "http": {"listen": "127.0.0.1:0"}})
    assert tomllib.loads(text) == {"http": {"listen": "127.0.0.1:0"}}


def test_log_reader_keeps_both_listening_events() -> None:
    lines = [
        b'{"event": "listening-http", "address": "127.0.0.1:4431"}\n',
        b"not json\n",
        b'{"event": "access", "address": "x"}\n',
        b'{"event": "listening", "address": "127.0.0.1:7070", "transport": "tcp"}\n',
    ]
    reader = LogReader(io.BytesIO(b"".join(lines)))
    reader.run()
    assert [e["event"] for e in reader.listening] == ["listening-http", "listening"]
    first = reader.wait_for(lambda e: e.get("event") == "listening", 0)
    assert first is not None and first["address"] == "127.0.0.1:7070"


def _stats(seconds: float) -> dict[str, Any]:
    rate = GIB / seconds / 1e6
    return {
        "seconds": {"median": seconds, "min": seconds, "max": seconds},
        "mb_per_s": {"median": rate, "min": rate, "max": rate},
        "client_rss_kib_max": 10240,
        "server_rss_kib_max": 102400,
    }


def _data(curl_s: float, recv_s: float) -> dict[str, Any]:
    summary = {CURL: _stats(curl_s), FLUX: _stats(recv_s)}
    ratio = summary[CURL]["mb_per_s"]["median"] / summary[FLUX]["mb_per_s"]["median"]
    machine = {
        "cpu": "CPU",
        "cores": "2",
        "kernel": "6",
        "python": "3.11",
        "commit": "abc",
        "date": "today",
        "load_at_start": "0.1",
        "filesystem": "ext4",
    }
    throughput = {"size": GIB, "reps": 5, "summary": summary, "ratio": ratio, "runs": []}
    return {"scenario": "http", "machine": machine, "throughput": throughput}


def test_render_meets_the_goal() -> None:
    text = render(_data(curl_s=3.5, recv_s=4.0))
    assert text.startswith("## http")
    assert "| curl → fluxd HTTPS (GET) | 3.500 |" in text
    assert "| fluxctl recv --transport tcp | 4.000 |" in text
    assert "**1.14x** (goal ≥ 0.8x: **met**)" in text


def test_render_misses_the_goal() -> None:
    assert "**0.50x** (goal ≥ 0.8x: **missed**)" in render(_data(curl_s=8.0, recv_s=4.0))
