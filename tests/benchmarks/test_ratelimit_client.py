"""benchmarks.scenarios.ratelimit_client: the plan, the rate of a report, the verdict, the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.scenarios.ratelimit_client import (
    Run,
    measure,
    moved_rate,
    plan,
    render,
    verdict,
)

MIB = 1 << 20


def test_the_plan_alternates_unlimited_and_limited_runs_with_fresh_names() -> None:
    runs = list(plan(["5M", "20M"], 2))
    assert len(runs) == 16
    assert [r.limit for r in runs[:4]] == [None, "5M", None, "5M"]
    assert [r.way for r in runs[:4]] == ["send", "send", "recv", "recv"]
    assert len({r.name for r in runs}) == len(runs)  # no send or recv finds an earlier file


def test_the_rate_is_the_payload_moved_not_the_file_size() -> None:
    resumed = {"op": "send", "bytes": 10_000_000, "sent": 2_000_000, "seconds": 2.0}
    assert moved_rate(resumed) == pytest.approx(1.0)
    got = {"op": "recv", "bytes": 4_000_000, "received": 4_000_000, "seconds": 0.5}
    assert moved_rate(got) == pytest.approx(8.0)


def test_a_skipped_transfer_has_no_rate() -> None:
    with pytest.raises(ValueError, match="moved 0 bytes"):
        moved_rate({"op": "send", "bytes": 10, "sent": 0, "seconds": 0.01})


@pytest.mark.parametrize(
    ("measured", "text"),
    [
        (5 * MIB / 1e6, "100.0 % (within ±10 %)"),
        (5 * MIB * 1.2 / 1e6, "120.0 % (OUTSIDE ±10 %)"),
    ],
)
def test_verdict_is_a_share_of_the_limit_in_bytes(measured: float, text: str) -> None:
    assert verdict(measured, 5 * MIB) == text


def test_measure_files_each_run_under_its_pair_and_renders_a_row_per_command() -> None:
    seen: list[tuple[Run, int]] = []

    def transfer(run: Run, src: Path) -> dict[str, Any]:
        seen.append((run, int(src.name)))
        rate = 1 << 20 if run.limited else 100 << 20  # bytes/s
        moved = int(src.name)
        key = "sent" if run.way == "send" else "received"
        return {"op": run.way, key: moved, "seconds": moved / rate}

    data = measure(["1M"], 3, 2.0, lambda size: Path(str(size)), transfer)
    assert {size for _, size in seen} == {2 * MIB}
    row = data["limits"][0]
    assert row["send"]["limited"] == [pytest.approx(MIB / 1e6)] * 3
    assert row["recv"]["unlimited"] == [pytest.approx(100 * MIB / 1e6)] * 3
    table = render(data, 0.25)
    row_text = "| --bwlimit 1M (1.05 MB/s) | send | 1.05 | 1.05-1.05 | 100.0 % (within ±10 %) |"
    assert row_text in table
    assert "up to 14 % above the limit" in table
