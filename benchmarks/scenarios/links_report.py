"""The markdown section of RESULTS.md for scenario `links`, rendered from a run's data."""

from __future__ import annotations

from typing import Any

from ..files import format_size
from ..report import markdown_table
from .common_report import STATS_HEAD, machine_paragraph, stats_row, verdict

LOSSY_SHARE, LOSSY_RATIO = 0.60, 4.0
FLUX_TOOLS = ("fluxd-tcp", "fluxd-tcp4", "fluxd-auto", "fluxd-quic")
#: Issue 13's goals: auto against the better forced transport (mobile: against QUIC), against
#: scp on lan; four TCP lanes against one on lossy (wan with 1 % loss).
AUTO_RATIO, AUTO_SCP, LANES4_RATIO = 0.95, 1.5, 2.0
LABELS = {
    "fluxd-tcp": "fluxctl → fluxd, TCP + TLS",
    "fluxd-tcp4": "fluxctl → fluxd, 4 TCP lanes (`--transport tcp --lanes 4`)",
    "fluxd-auto": "fluxctl → fluxd, auto (TCP and QUIC lanes)",
    "fluxd-quic": "fluxctl → fluxd, QUIC",
    "scp": "scp (aes128-gcm)",
    "rsync": "rsync over ssh (aes128-gcm)",
}


def describe_link(spec: dict[str, Any]) -> str:
    """What an emulated link was given: rate, RTT, loss, address changes, blackholes."""
    parts = [f"{spec['rate'] / 1e6:g} Mbit/s" if spec.get("rate") else "no rate limit"]
    if spec.get("rtt"):
        parts.append(f"{spec['rtt'] * 1000:g} ms RTT")
    if spec.get("loss"):
        parts.append(f"{spec['loss'] * 100:g} % loss")
    if spec.get("rebind_every"):
        parts.append(f"address change every {spec['rebind_every']:g} s")
    if spec.get("blackhole_every"):
        parts.append(f"{spec['blackhole_for']:g} s blackhole every {spec['blackhole_every']:g} s")
    if not spec.get("relay", True):
        parts.append("veth + tbf, no relay")
    return ", ".join(parts)


def render_link(data: dict[str, Any], link: dict[str, Any]) -> str:
    """One link's section: what the link is, the run's machine, self-test, table, targets."""
    name, spec = link["link"], link["spec"]
    out = [f"### {name}: {describe_link(spec)}", "", _machine(data), ""]
    if data.get("quick"):
        out += ["**Quick run** (`--quick`): small files, one repetition.", ""]
    out += ["Self-test: " + "; ".join(link.get("selftest", [])) + ".", ""]
    if "refused" in link:
        return "\n".join([*out, f"**Not reported: {link['refused']}.**"])
    reps, size, summary = link["reps"], link["size"], link["summary"]
    out.append(f"{format_size(size)} per transfer, {reps} repetition(s) per tool, alternated.")
    out.append("")
    rows = []
    ran = link.get("tools", list(LABELS))  # runs before --tools had every tool
    for tool, name_of_tool in LABELS.items():
        if tool not in ran:
            continue
        done = sum(1 for r in link["runs"] if r["tool"] == tool)
        label = f"{name_of_tool} ({done}/{reps} completed)"
        if tool in summary:
            row = stats_row(label, summary[tool])
            if spec.get("rate"):
                share = summary[tool]["mb_per_s"]["median"] * 8e6 / spec["rate"]
                row.append(f"{share * 100:.0f} %")
            else:
                row.append("")
            rows.append(row)
        else:
            rows.append([label, *["—"] * 7])
    out.append(markdown_table([*STATS_HEAD, "of link rate"], rows))
    retries = {
        tool: [r["details"]["report"].get("retries") for r in link["runs"] if r["tool"] == tool]
        for tool in FLUX_TOOLS
        if tool in ran
    }
    out += ["", "fluxctl retries per run: " + ", ".join(f"{t} {v}" for t, v in retries.items())]
    for failure in link["failures"]:
        out.append(f"- {failure['tool']} rep {failure['rep'] + 1} failed: {failure['error']}")
    best = max(_median(summary, t) for t in FLUX_TOOLS)
    each = ", ".join(
        f"{tool} {best / _median(summary, tool):.2f}x" if tool in summary else f"{tool} failed"
        for tool in ("scp", "rsync")
        if tool in ran
    )
    if each:
        out += ["", f"fluxd's best transport against each peer: {each}."]
    out.append("")
    out.append(_targets(name, spec, summary, retries, ran))
    if lanes := _lane_targets(name, summary):
        out += ["", lanes]
    return "\n".join(out)


def _lane_targets(name: str, summary: dict[str, Any]) -> str:
    """Issue 13's ratios where the run has the tools they compare (empty if none)."""
    med = {t: _median(summary, t) for t in (*FLUX_TOOLS, "scp")}
    parts = []
    if med["fluxd-auto"]:
        if name == "mobile":
            base, goal, what = med["fluxd-quic"], 1.0, "QUIC alone"
        elif name == "lan":
            base, goal, what = med["fluxd-tcp"], AUTO_RATIO, "TCP alone"
        else:
            base, goal, what = (
                max(med["fluxd-tcp"], med["fluxd-quic"]),
                AUTO_RATIO,
                ("the better forced transport"),
            )
        if base:
            ratio = med["fluxd-auto"] / base
            parts.append(
                f"auto / {what}: **{ratio:.2f}x** (goal ≥ {goal:g}x: {verdict(ratio >= goal)})"
            )
        if name == "lan" and med["scp"]:
            ratio = med["fluxd-auto"] / med["scp"]
            parts.append(
                f"auto / scp: **{ratio:.2f}x** (goal ≥ {AUTO_SCP:g}x: {verdict(ratio >= AUTO_SCP)})"
            )
    if med["fluxd-tcp4"] and med["fluxd-tcp"]:
        ratio = med["fluxd-tcp4"] / med["fluxd-tcp"]
        goal = (
            f" (goal ≥ {LANES4_RATIO:g}x: {verdict(ratio >= LANES4_RATIO)})"
            if name == "lossy"
            else ""
        )
        parts.append(f"4 TCP lanes / one: **{ratio:.2f}x**{goal}")
    return ("Lanes (issue 13): " + "; ".join(parts) + ".") if parts else ""


def _median(summary: dict[str, Any], tool: str) -> float:
    return float(summary[tool]["mb_per_s"]["median"]) if tool in summary else 0.0


def _targets(
    name: str,
    spec: dict[str, Any],
    summary: dict[str, Any],
    retries: dict[str, list[Any]],
    ran: list[str],
) -> str:
    best = max(_median(summary, t) for t in FLUX_TOOLS)
    scp = _median(summary, "scp")
    if name == "lossy" and spec.get("rate"):
        share = best * 8e6 / spec["rate"]
        ratio = best / scp if scp else float("inf")
        against = (
            f"{ratio:.2f}x scp (goal ≥ {LOSSY_RATIO:g}x: {verdict(ratio >= LOSSY_RATIO)})"
            if "scp" in ran
            else "scp not run"
        )
        return (
            f"Targets: fluxd's best {best:.1f} MB/s = {share * 100:.0f} % of the link rate (goal "
            f"≥ {LOSSY_SHARE * 100:.0f} %: {verdict(share >= LOSSY_SHARE)}); {against}."
        )
    if name == "mobile":
        quic = retries.get("fluxd-quic", [])
        ok = bool(quic) and all(r == 0 for r in quic)
        return (
            f"Target: fluxd over QUIC completes unattended with 0 reconnects: retries {quic} "
            f"({verdict(ok)})."
        )
    against = f"{best / scp:.2f}x scp" if scp else "scp did not complete (or was not run)"
    return f"fluxd's best: {best:.1f} MB/s, {against}."


def _machine(data: dict[str, Any]) -> str:
    software = (
        f"default TCP congestion control {data['tcp_congestion_control']} in both namespaces "
        "(scp, rsync; fluxd asks for BBR on its own TCP sockets)"
    )
    return machine_paragraph(data["machine"], software)


def render_header() -> str:
    """The `links` section: how the links are run (each link has its own section below)."""
    return (
        "## links: fluxd against scp and rsync over emulated links\n\n"
        "Links come from `benchmarks/netem/links.toml` and run between two network namespaces "
        "joined by the userspace relay of `benchmarks/netem` (lan: a veth pair with tbf). Each "
        "link passes its self-test before it carries a transfer. Daemons and sshd run in one "
        "namespace, the clients in the other; blackholes and address changes restart with every "
        "transfer, so each tool meets them at the same moments of its transfer (mobile: dark "
        "25-30 s in, new client address at 30 s; packets to an old address are dropped). MB/s = "
        "10^6 bytes/s of file over the client's wall time; fluxd fdatasyncs before "
        "acknowledging, scp and rsync do not sync. Each link's section comes from the latest "
        "run that included it (`python -m benchmarks links --link NAME`)."
    )
