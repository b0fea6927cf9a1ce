"""Link specifications from the command line and from scenario files (TOML)."""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import parse_size
from .model import GilbertElliott, LinkSpec

LINKS_FILE = Path(__file__).with_name("links.toml")

_RATE = re.compile(r"^\s*([0-9.]+)\s*([kmg]?)(?:bit|b|bps)?(?:/s)?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*([0-9.]+)\s*(us|ms|s)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


class SpecError(ValueError):
    """A link specification that does not parse or makes no sense."""


def parse_rate(text: str) -> float:
    """Bits per second: "100mbit", "1g", "20M" (decimal prefixes, like tc)."""
    m = _RATE.match(str(text))
    if not m:
        raise SpecError(f"not a rate: {text!r} (say 100mbit, 1gbit)")
    return float(m.group(1)) * _SCALE[m.group(2).lower()]


def parse_time(text: str | float) -> float:
    """Seconds: "40ms", "30s", "250us", or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = _TIME.match(text)
    if not m:
        raise SpecError(f"not a time: {text!r} (say 40ms, 30s)")
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def parse_share(text: str | float) -> float:
    """A probability: "1%", "0.01"."""
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    try:
        return float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise SpecError(f"not a share: {text!r} (say 1% or 0.01)") from None


def parse_queue(text: str | int) -> int:
    """Bytes, binary prefixes: "256K", "1M"."""
    if isinstance(text, int):
        return text
    try:
        return parse_size(text)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def parse_gilbert(text: str) -> GilbertElliott:
    """ "p,r[,loss_bad[,loss_good]]", each a share: "1%,30%" or "0.01,0.3,1,0"."""
    parts = [parse_share(p) for p in text.split(",")]
    if not 2 <= len(parts) <= 4:
        raise SpecError(f"burst loss wants p,r[,loss_bad[,loss_good]]: {text!r}")
    return GilbertElliott(*parts)


@dataclass(frozen=True)
class Emulated:
    """A named link: the model's spec, and whether it needs the relay (False: veth + tbf)."""

    name: str
    spec: LinkSpec
    relay: bool = True


_FIELDS: dict[str, Any] = {
    "rate": parse_rate,
    "rtt": parse_time,
    "jitter": parse_time,
    "loss": parse_share,
    "burst_loss": parse_gilbert,
    "reorder": parse_share,
    "reorder_gap": parse_time,
    "duplicate": parse_share,
    "queue": parse_queue,
    "blackhole_every": parse_time,
    "blackhole_for": parse_time,
    "rebind_every": parse_time,
    "seed": int,
}


def from_mapping(name: str, table: dict[str, Any]) -> Emulated:
    """An `Emulated` from one TOML table (or the command line's options as a dict)."""
    values: dict[str, Any] = {}
    relay = bool(table.get("relay", True))
    for key, raw in table.items():
        if key == "relay" or raw is None:
            continue
        if key not in _FIELDS:
            raise SpecError(f"link {name!r}: unknown setting {key!r}")
        values[key] = _FIELDS[key](raw)
    try:
        spec = LinkSpec(**values)
    except ValueError as exc:
        raise SpecError(f"link {name!r}: {exc}") from None
    if not relay and spec.rate is None:
        raise SpecError(f"link {name!r}: a link without relay needs a rate")
    if not relay and set(values) - {"rate", "seed"}:
        raise SpecError(f"link {name!r}: without relay only `rate` applies")
    return Emulated(name, spec, relay)


def _table(name: str, path: Path) -> dict[str, Any]:
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    if not isinstance(tables.get(name), dict):
        raise SpecError(f"{path}: no link {name!r} (has: {', '.join(sorted(tables))})")
    return dict(tables[name])


def load(name: str, path: Path = LINKS_FILE) -> Emulated:
    """The link called `name` in a scenario file."""
    return from_mapping(name, _table(name, path))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that pick a named link and/or override any of its settings."""
    parser.add_argument("--link", help="a link from the scenario file (lan, wan, lossy, mobile)")
    parser.add_argument("--file", type=Path, default=LINKS_FILE, help="scenario file [%(default)s]")
    parser.add_argument("--no-relay", action="store_true", help="veth + tbf instead of the relay")
    for key in _FIELDS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=f"link_{key}", metavar="VALUE")


def from_args(args: argparse.Namespace) -> Emulated:
    """The named link (if any) with the command line's overrides applied."""
    name = args.link or "custom"
    table = _table(args.link, args.file) if args.link else {}
    for key in _FIELDS:
        value = getattr(args, f"link_{key}")
        if value is not None:
            table[key] = value
    if args.no_relay:
        table["relay"] = False
    return from_mapping(name, table)
