"""Scenario `tree`, its pure parts: the test tree and its digest, what each tool's account of a
run must say, the summary, the ratios and the rendered sections (nothing here times anything)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import BenchError
from benchmarks.measure import Run
from benchmarks.peers.base import Transfer
from benchmarks.peers.tree import FRESH, RERUN, check_flux_report, rsync_transferred
from benchmarks.plots import _groups
from benchmarks.scenarios.tree import summarize_tree
from benchmarks.scenarios.tree_report import ratios, render_memory, render_place
from benchmarks.treefiles import TreeSpec, expected, generate, tree_info

SMALL = TreeSpec(small_files=25, folders=4, small_size=100, big_files=2, big_size=3000)


def test_the_issues_tree_is_10000_small_files_in_100_folders_and_10_big_ones() -> None:
    spec = TreeSpec.scaled(10_000)
    assert (spec.small_files, spec.folders, spec.big_files) == (10_000, 100, 10)
    assert spec.bytes == 10_000 * 4096 + 10 * 16 * 2**20
    assert spec.describe() == "10,000 x 4 KiB in 100 folders + 10 x 16 MiB (199 MiB)"
    layout = list(spec.layout())
    assert len({rel for rel, _ in layout}) == spec.files == 10_010
    assert len({rel.rpartition("/")[0] for rel, _ in layout} - {""}) == 100
    rss = TreeSpec.scaled(100_000, big_files=False)
    assert (rss.folders, rss.big_files, rss.files) == (1000, 0, 100_000)


def test_a_generated_tree_is_the_same_every_time_and_its_walk_agrees(tmp_path: Path) -> None:
    first = generate(SMALL, tmp_path / "a")
    second = generate(SMALL, tmp_path / "b")
    assert first == second == expected(SMALL)
    assert (first.files, first.bytes, first.other) == (27, 25 * 100 + 2 * 3000, 0)
    assert tree_info(tmp_path / "a") == first
    assert (tmp_path / "a" / "d0" / "f00.bin").read_bytes() == (
        tmp_path / "b" / "d0" / "f00.bin"
    ).read_bytes()
    other_seed = TreeSpec(25, 4, 100, 2, 3000, seed=13)
    assert expected(other_seed).digest != first.digest


def test_the_digest_catches_a_changed_byte_a_missing_file_and_a_link(tmp_path: Path) -> None:
    root = tmp_path / "t"
    good = generate(SMALL, root)
    victim = root / "d1" / "f01.bin"
    data = bytearray(victim.read_bytes())
    data[50] ^= 1
    victim.write_bytes(bytes(data))
    changed = tree_info(root)
    assert (changed.files, changed.bytes) == (good.files, good.bytes)
    assert changed.digest != good.digest
    victim.unlink()
    assert tree_info(root).files == good.files - 1
    (root / "link").symlink_to("d0")
    assert tree_info(root).other == 1


def report(**changes: Any) -> dict[str, Any]:
    base = {"ok": True, "files": SMALL.files, "bytes": SMALL.bytes, "sent": SMALL.bytes}
    return base | {"skipped_files": 0} | changes


def test_fluxctl_must_send_every_file_fresh_and_none_on_the_rerun() -> None:
    check_flux_report(report(), SMALL, FRESH, strict=True)
    check_flux_report(report(sent=0, skipped_files=SMALL.files), SMALL, RERUN, strict=True)
    check_flux_report(report(sent=SMALL.bytes + 10), SMALL, FRESH, strict=False)  # resent
    wrong = [
        (report(files=SMALL.files - 1), FRESH, True),
        (report(ok=False, exit_code=6), FRESH, True),
        (report(sent=SMALL.bytes + 10), FRESH, True),
        (report(sent=SMALL.bytes - 1), FRESH, False),
        (report(), RERUN, True),  # a rerun that sent it all again
        (report(sent=0, skipped_files=3), RERUN, True),
    ]
    for bad, kind, strict in wrong:
        with pytest.raises(BenchError):
            check_flux_report(bad, SMALL, kind, strict)


def test_rsync_stats_give_the_files_transferred() -> None:
    stats = (
        "\nNumber of files: 10,111 (reg: 10,010, dir: 101)\n"
        "Number of created files: 10,110\n"
        "Number of regular files transferred: 10,010\n"
        "Total file size: 208,678,912 bytes\n"
    )
    assert rsync_transferred(stats) == 10_010
    assert rsync_transferred("Number of regular files transferred: 0\n") == 0
    with pytest.raises(BenchError):
        rsync_transferred("sent 12 bytes  received 34 bytes\n")


def transfer(tool: str, kind: str, seconds: float, files: int = 100) -> Transfer:
    run = Run([tool], 0, seconds, 50 * 1024, 0.1, "", "")
    details = {"kind": kind, "rep": 0, "files": files}
    return Transfer.from_run(tool, 1_000_000, run, 80 * 1024, details)


RUNS = [
    transfer("fluxctl", FRESH, 1.0),
    transfer("fluxctl", RERUN, 0.2),
    transfer("rsync", FRESH, 3.0),
    transfer("rsync", RERUN, 0.5),
    transfer("scp", FRESH, 1.5),
    transfer("fluxctl", FRESH, 2.0),
    transfer("fluxctl", RERUN, 0.3),
    transfer("rsync", FRESH, 5.0),
    transfer("rsync", RERUN, 0.5),
    transfer("scp", FRESH, 2.5),
]


def test_summary_and_ratios_use_medians_per_kind() -> None:
    summary = summarize_tree(RUNS)
    assert list(summary["fresh"]) == ["fluxctl", "rsync", "scp"]
    assert list(summary["rerun"]) == ["fluxctl", "rsync"]
    assert summary["fresh"]["fluxctl"]["seconds"]["median"] == pytest.approx(1.5)
    assert summary["fresh"]["rsync"]["files_per_s"]["median"] == pytest.approx(
        (100 / 3 + 100 / 5) / 2
    )
    assert summary["rerun"]["fluxctl"]["runs"] == 2
    r = ratios(summary)
    assert r["rsync"] == pytest.approx(75 / ((100 / 3 + 100 / 5) / 2))
    assert r["scp"] == pytest.approx(75 / ((100 / 1.5 + 100 / 2.5) / 2))
    assert r["rerun"] == pytest.approx(0.5 / 0.25)
    assert ratios({"fresh": {"rsync": summary["fresh"]["rsync"]}}) == {
        "rsync": None,
        "scp": None,
        "rerun": None,
    }


MACHINE = {
    "cpu": "cpu", "cores": "2", "kernel": "6", "python": "3.11", "openssh": "OpenSSH_9",
    "commit": "abc", "date": "today", "load_at_start": "0.1", "filesystem": "ext4",
}  # fmt: skip
DATA = {"machine": MACHINE, "tcp_congestion_control": "cubic", "quick": False}


def test_a_place_renders_its_table_targets_and_failures() -> None:
    link = {
        "link": "loopback",
        "spec": {},
        "tree": {"small_files": 25, "folders": 4, "small_size": 100, "big_files": 2},
        "reps": 2,
        "summary": summarize_tree(RUNS),
        "failures": [{"tool": "scp", "rep": 2, "error": "lost connection"}],
        "runs": [t.to_json() for t in RUNS],
    }
    text = render_place(DATA, link)
    assert text.startswith("### loopback: 25 x 100 B in 4 folders + 2 x 16 MiB")
    assert "| fluxctl send -r → fluxd (TCP + TLS 1.3) | fresh | 2/2 | 1.500 |" in text
    assert "| rsync -a over ssh (aes128-gcm) | rerun | 2/2 |" in text
    assert "scp -r (aes128-gcm) | rerun" not in text
    assert "- scp rep 3 failed: lost connection" in text
    assert "over rsync -a: **2.81x** (goal ≥ 2x: **met**)" in text
    assert "over scp -r: **1.41x** (goal ≥ 2x: **missed**)" in text
    assert "rsync s over fluxctl s: **2.00x** (goal ≥ 2x: **met**)" in text
    groups, _ = _groups("tree", {"links": [link]})
    assert list(groups["loopback"]) == ["fluxctl", "rsync", "scp"]


def test_a_link_that_failed_its_self_test_has_no_table() -> None:
    link = {
        "link": "lossy",
        "spec": {"rate": 100e6, "rtt": 0.04, "loss": 0.01},
        "selftest": ["rtt: bad"],
        "refused": "the link failed its self-test",
    }
    text = render_place(DATA, link)
    assert "100 Mbit/s, 40 ms RTT, 1 % loss" in text
    assert "**Not reported: the link failed its self-test.**" in text
    assert _groups("tree", {"links": [link]})[0] == {}


def test_the_memory_section_judges_both_fluxctl_and_fluxd() -> None:
    mem = {
        "tree": {"small_files": 100_000, "folders": 1000},
        "daemon_peak_reset_by_clear_refs": True,
        "failures": [],
        "runs": [t.to_json() for t in RUNS[:2]],
    }
    text = render_memory(DATA, mem)
    assert "### Peak RSS over 100,000 x 4 KiB in 1,000 folders (391 MiB), loopback" in text
    assert "fluxctl 50.0 MiB, fluxd 80.0 MiB (**met**)" in text
    big = dict(mem, runs=[dict(RUNS[0].to_json(), server_rss_kib=210 * 1024)])
    assert "fluxd 210.0 MiB (**missed**)" in render_memory(DATA, big)
    assert "not measured" in render_memory(DATA, dict(mem, runs=[]))
    assert _groups("tree", {"memory": mem})[0] == {}
