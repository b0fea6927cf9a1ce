"""The markdown sections of RESULTS.md for scenario `tree`, rendered from a run's data."""

from __future__ import annotations

from typing import Any

from ..report import markdown_table
from ..treefiles import TreeSpec
from .common_report import machine_paragraph, mib, verdict
from .links_report import describe_link

TARGET_RATIO = 2.0  # fluxctl's files/s against rsync -a and scp -r, and rsync's rerun time
TARGET_RSS_MIB = 200
LABELS = {
    "fluxctl": "fluxctl send -r → fluxd (TCP + TLS 1.3)",
    "rsync": "rsync -a over ssh (aes128-gcm)",
    "scp": "scp -r (aes128-gcm)",
}
HEAD = [
    "tool", "run", "done", "median s", "min s", "max s", "median files/s", "median MB/s",
    "client peak MiB", "server peak MiB",
]  # fmt: skip


def _spec(data: dict[str, Any]) -> TreeSpec:
    return TreeSpec(**data)


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """fluxctl's median files/s over rsync's and scp's (fresh runs), and rsync's median rerun
    seconds over fluxctl's; None where a side has no completed run."""

    def median(kind: str, tool: str, key: str) -> float | None:
        s = summary.get(kind, {}).get(tool)
        return float(s[key]["median"]) if s else None

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    flux = median("fresh", "fluxctl", "files_per_s")
    return {
        "rsync": over(flux, median("fresh", "rsync", "files_per_s")),
        "scp": over(flux, median("fresh", "scp", "files_per_s")),
        "rerun": over(median("rerun", "rsync", "seconds"), median("rerun", "fluxctl", "seconds")),
    }


def _row(tool: str, kind: str, s: dict[str, Any] | None, reps: int) -> list[str]:
    label = LABELS.get(tool, tool)
    if s is None:
        return [label, kind, f"0/{reps}", *["—"] * (len(HEAD) - 3)]
    keys = ("median", "min", "max")
    return [
        label,
        kind,
        f"{s['runs']}/{reps}",
        *(f"{s['seconds'][k]:.3f}" for k in keys),
        f"{s['files_per_s']['median']:,.0f}",
        f"{s['mb_per_s']['median']:.1f}",
        mib(s["client_rss_kib_max"]),
        mib(s["server_rss_kib_max"]),
    ]


def _table(link: dict[str, Any]) -> str:
    summary, reps = link["summary"], link["reps"]
    seen = {r["tool"] for r in link["runs"]} | {f["tool"] for f in link["failures"]}
    tools = [t for t in LABELS if t in seen]  # the order they alternate in, failed or not
    rows = [_row(t, "fresh", summary.get("fresh", {}).get(t), reps) for t in tools]
    rows += [_row(t, "rerun", summary.get("rerun", {}).get(t), reps) for t in tools if t != "scp"]
    return markdown_table(HEAD, rows)


def _goal(name: str, value: float | None) -> str:
    if value is None:
        return f"{name}: not measured"
    return f"{name}: **{value:.2f}x** (goal ≥ {TARGET_RATIO:g}x: {verdict(value >= TARGET_RATIO)})"


def _targets(summary: dict[str, dict[str, Any]]) -> str:
    r = ratios(summary)
    return "Targets: " + "; ".join(
        [
            _goal("fluxctl files/s over rsync -a", r["rsync"]),
            _goal("over scp -r", r["scp"]),
            _goal("unchanged rerun, rsync s over fluxctl s", r["rerun"]),
        ]
    ) + "."  # fmt: skip


def render_place(data: dict[str, Any], link: dict[str, Any]) -> str:
    """One place's section (loopback or an emulated link): tree, machine, table, targets."""
    name = link["link"]
    head = f"### {name}"
    if "tree" in link:
        head += f": {_spec(link['tree']).describe()}"
    out = [head, "", _machine(data), ""]
    if data.get("quick"):
        out += ["**Quick run** (`--quick`): a smaller tree, one repetition.", ""]
    if "selftest" in link:
        out += [f"Link: {describe_link(link['spec'])}. Self-test: "
                + "; ".join(link["selftest"]) + ".", ""]  # fmt: skip
    if "refused" in link:
        return "\n".join([*out, f"**Not reported: {link['refused']}.**"])
    out += [f"{link['reps']} repetition(s), tools alternated.", "", _table(link), ""]
    out += [f"- {f['tool']} rep {f['rep'] + 1} failed: {f['error']}" for f in link["failures"]]
    if link["failures"]:
        out.append("")
    out.append(_targets(link["summary"]))
    return "\n".join(out)


def render_memory(data: dict[str, Any], mem: dict[str, Any]) -> str:
    """The peak-RSS section: one fresh run and one rerun per tool over the big tree."""
    spec = _spec(mem["tree"])
    rows = []
    for r in mem["runs"]:
        files_per_s = r["details"]["files"] / r["seconds"]
        rows.append([LABELS.get(r["tool"], r["tool"]), r["details"]["kind"],
                     f"{r['seconds']:.3f}", f"{files_per_s:,.0f}", mib(r["client_rss_kib"]),
                     mib(r["server_rss_kib"])])  # fmt: skip
    out = [f"### Peak RSS over {spec.describe()}, loopback", "", _machine(data), ""]
    out.append(markdown_table(["tool", "run", "seconds", "files/s", "client peak MiB",
                               "server peak MiB"], rows) if rows else "None measured.")  # fmt: skip
    out += ["", *(f"- {f['tool']} failed: {f['error']}" for f in mem["failures"])]
    flux = [r for r in mem["runs"] if r["tool"] == "fluxctl"]
    if flux:
        client = max(r["client_rss_kib"] for r in flux)
        server = max(r["server_rss_kib"] or 0 for r in flux)
        ok = max(client, server) < TARGET_RSS_MIB * 1024
        out.append(
            f"Target: fluxctl and fluxd each under {TARGET_RSS_MIB} MiB: fluxctl {mib(client)} "
            f"MiB, fluxd {mib(server)} MiB ({verdict(ok)})."
        )
    else:
        out.append(f"Target: fluxctl and fluxd each under {TARGET_RSS_MIB} MiB: not measured.")
    how = "VmHWM of a daemon started for this tree"
    if mem.get("daemon_peak_reset_by_clear_refs"):
        how = "VmHWM, reset through /proc/PID/clear_refs before each run"
    out += ["", f"fluxd: {how}. Clients: `ru_maxrss` (GNU time `%M`; for rsync the larger of "
            "rsync and its ssh child). rsync's server side: the sampled sum of VmHWM over sshd's "
            "session processes (which include the receiving rsync)."]  # fmt: skip
    return "\n".join(out)


def _machine(data: dict[str, Any]) -> str:
    software = f"{data['machine']['openssh']}, default TCP congestion control " + (
        f"{data['tcp_congestion_control']} in the link namespaces (fluxd asks for BBR)"
    )
    return machine_paragraph(data["machine"], software)


def render_header() -> str:
    """The `tree` section: what is measured and how (each place has its own section below)."""
    return (
        "## tree: a folder tree, fluxctl send -r against rsync -a and scp -r\n\n"
        "The issue's tree is 10,000 files of 4 KiB in 100 folders plus 10 files of 16 MiB at "
        "its root, pseudo-random bytes (`python -m benchmarks tree`; on the emulated links a "
        "tree of the same shape at a tenth of the size, since scp -r pays several round trips "
        "per file). Every repetition copies the tree into an empty destination (fresh), checks "
        "the copy whole (each file's name, size and bytes against the source's digest), then "
        "runs the same command again with nothing changed (rerun: fluxctl and rsync, which "
        "skip files whose size and mtime match; their own accounts are checked too: all files "
        "sent fresh, none on the rerun); tools alternate. Commands: `fluxctl send -r SRC "
        "flux://HOST:PORT/bench/tree-N --transport tcp`, `rsync -a -e 'ssh -c "
        "aes128-gcm@openssh.com' SRC/ HOST:DEST/`, `scp -r -c aes128-gcm@openssh.com SRC "
        "HOST:DEST` (OpenSSH's SFTP protocol, `internal-sftp`). Seconds are the wall time of "
        "the client process; files/s and MB/s (10^6 bytes/s) are the tree's files and bytes "
        "over it. fluxd makes every file durable before it reports success (small files in "
        "group commits); rsync and scp do not sync. Peak RSS: client `ru_maxrss`; fluxd "
        "VmHWM; sshd's side the sampled sum of its session processes' VmHWM. Each place's "
        "section comes from the latest run that included it (`--links loopback,wan,lossy`)."
    )
