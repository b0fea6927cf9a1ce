"""PNG plots of a run's goodput per tool (and peak RSS by file size), beside RESULTS.md.

matplotlib is the `bench` extra (`make bench` installs it); without it, runs are still saved and
RESULTS.md is still written, only the plot is skipped with a note.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

PLOTS_DIR = Path(__file__).resolve().parent / "plots"

Groups = dict[str, dict[str, dict[str, float]]]  # group -> tool -> {median, min, max} MB/s


def _groups(scenario: str, data: dict[str, Any]) -> tuple[Groups, str]:
    """The bars to draw: one group per link/crowd/size, one bar per tool (none for fuzz)."""
    if scenario == "fuzz":
        return {}, ""
    if scenario == "housekeeping":
        reps = {"scrub": data["scrub_mb_s"], "dd": data["dd_mb_s"]}
        return {"read rate": {k: _stats(v) for k, v in reps.items()}}, (
            "fluxd scrub against dd, cold cache (MB/s, median; bars: min-max)"
        )
    if scenario == "links":  # as a share of each link's rate, so that links compare
        groups: Groups = {}
        for link in data["links"]:
            if "summary" not in link:
                continue  # refused by its self-test: no figures
            scale = 8e6 / link["spec"]["rate"] * 100
            tools = {
                t: {k: v * scale for k, v in s["mb_per_s"].items()}
                for t, s in link["summary"].items()
            }
            for failure in link.get("failures", []):  # drawn as "failed" at zero
                tools.setdefault(failure["tool"], {"median": 0.0, "min": 0.0, "max": 0.0})
            groups[link["link"]] = tools
        return groups, "goodput, % of the link's rate (median; bars: min-max)"
    if scenario == "tree":  # fresh copies of the tree at each place; the peak-RSS run: none
        groups = {
            link["link"]: {t: s["files_per_s"] for t, s in link["summary"].get("fresh", {}).items()}
            for link in data.get("links", [])
            if "summary" in link
        }
        return groups, "tree copied into an empty destination (files/s, median; bars: min-max)"
    if scenario == "concurrency":
        single = data["single"]
        groups = {"1 client": {"fluxd": single}}
        for crowd in data["crowds"]:
            rate = crowd["aggregate_mb_per_s"]
            groups[f"{crowd['clients']} clients"] = {
                "fluxd": {"median": rate, "min": rate, "max": rate}
            }
        return groups, "aggregate goodput of concurrent 10 MiB uploads (MB/s)"
    if scenario == "ratelimit":  # as a share of each limit: 100 % is on target
        groups = {}
        for r in data["per_subject"]:
            groups[f"{r['limit']:g} MB/s per subject"] = {
                way: {k: v / r["limit"] * 100 for k, v in _stats(r[way]).items()}
                for way in ("upload", "download")
            }
        g = data["global"]
        share = g["aggregate"] / g["limit"] * 100
        groups[f"{g['limit']:g} MB/s global, 2 clients"] = {
            "upload": {"median": share, "min": share, "max": share}
        }
        return groups, "measured rate, % of the configured limit (median; bars: min-max)"
    summary = data["throughput"]["summary"]
    title = f"{scenario}: goodput over loopback (MB/s, median; bars: min-max)"
    return {"loopback": {t: s["mb_per_s"] for t, s in summary.items()}}, title


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1]}


def plot(
    scenario: str, data: dict[str, Any], out_dir: Path = PLOTS_DIR, name: str | None = None
) -> Path | None:
    """Draw the scenario's plot into out_dir/NAME.png (NAME: the scenario's); None if
    matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415 - optional (`bench` extra), loaded only to plot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return None
    groups, title = _groups(scenario, data)
    if not groups:
        return None
    tools = list(dict.fromkeys(t for g in groups.values() for t in g))
    memory = scenario == "core" and data.get("memory", {}).get("rows")
    fig, axes = plt.subplots(1, 2 if memory else 1, figsize=(12 if memory else 8, 4.5))
    ax = axes[0] if memory else axes
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        xs, heights, low, high = [], [], [], []
        for g, stats in enumerate(groups.values()):
            if tool not in stats:
                continue
            s = stats[tool]
            xs.append(g + i * width)
            heights.append(s["median"])
            low.append(s["median"] - s["min"])
            high.append(s["max"] - s["median"])
        ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=tool)
        for x, height in zip(xs, heights, strict=True):
            if height == 0:
                ax.text(x, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks([g + width * (len(tools) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(list(groups))
    ax.set_ylabel({"links": "% of link rate", "tree": "files/s"}.get(scenario, "MB/s"))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if memory:
        _memory(axes[1], data["memory"]["rows"])
    fig.tight_layout()
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{name or scenario}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _memory(ax: Any, rows: list[dict[str, Any]]) -> None:
    sizes = [row["size"] / 2**20 for row in rows]
    lines = [
        ("fluxd", "server_rss_kib", "fluxctl"),
        ("fluxctl", "client_rss_kib", "fluxctl"),
        ("scp", "client_rss_kib", "scp"),
    ]
    for side, key, tool in lines:
        ax.plot(sizes, [row[tool][key] / 1024 for row in rows], marker="o", label=side)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("peak RSS by file size", fontsize=10)
    ax.legend(fontsize=8)
