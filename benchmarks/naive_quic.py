"""A deliberately naive file transfer over stock aioquic: the reference of scenario `quic`.

It uses aioquic the way its documentation shows and nothing more: `serve` with a stream
handler, `connect`, one bidirectional stream, `writer.write(block)` + `await writer.drain()`,
default congestion control and flow-control limits. Only the datagram size is set (the same on
both sides), so fluxd's QUIC transport can be compared at the same packet size. It runs on
asyncio's own event loop unless `--loop uvloop` is given (see DEFAULT_LOOP for why).

    python -m benchmarks.naive_quic serve --port P --cert C --key K --dest DIR
    python -m benchmarks.naive_quic send FILE --port P [--datagram-size 1452]

Wire format on the one stream: the file name and a newline, the file's bytes, end of stream.
The server writes the bytes into DIR/NAME as they arrive (page cache only, no fsync) and, at end
of stream, answers one JSON line with the byte count and the xxh3-128 digest; the client checks
both against what it sent and prints one JSON line with bytes and seconds.

Standalone on purpose (aioquic, xxhash and optionally uvloop; nothing from fluxd or the harness),
so its start-up cost is that of a small aioquic script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import xxhash
from aioquic.asyncio.client import connect
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration

try:
    import uvloop
except ImportError:  # optional: only for --loop uvloop
    uvloop = None  # type: ignore[assignment]

ALPN = "flux-naive"
DEFAULT_DATAGRAM_SIZE = 1452
# aioquic encodes STREAM frame lengths as 2-byte varints: larger datagrams break the connection.
LARGEST_DATAGRAM_SIZE = 16000
BLOCK = 1024 * 1024
MAX_NAME = 255
# aioquic reads its clock from loop.time(). uvloop's advances in whole milliseconds, which spoils
# aioquic's RTT samples and pacing: ~2.6 MB/s instead of ~25 MB/s at 1452 bytes on loopback here.
# So the baseline runs on asyncio's own loop (as in aioquic's documentation), its faster setting:
# a baseline slowed down by an unrelated clock artefact would flatter fluxd.
DEFAULT_LOOP = "asyncio"


def _datagram_size(text: str) -> int:
    size = int(text)
    if not SMALLEST_MAX_DATAGRAM_SIZE <= size <= LARGEST_DATAGRAM_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be between {SMALLEST_MAX_DATAGRAM_SIZE} and {LARGEST_DATAGRAM_SIZE}"
        )
    return size


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _run(coro: Coroutine[Any, Any, int], loop: str) -> int:
    """Run on asyncio's loop, or on uvloop (fluxd's loop) if asked for and installed."""
    if loop == "uvloop" and uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


# --- server -------------------------------------------------------------------------------


async def _receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dest: Path) -> None:
    """Read one stream to its end into DEST/NAME, then answer with the byte count and digest."""
    start = time.perf_counter()
    name = (await reader.readline()).decode().strip()
    if not name or len(name) > MAX_NAME or "/" in name or name in (".", ".."):
        writer.write(json.dumps({"error": f"bad file name {name!r}"}).encode() + b"\n")
        writer.write_eof()
        return
    hasher, count = xxhash.xxh3_128(), 0
    with (dest / name).open("wb") as f:  # written as it comes; nothing is synced
        while data := await reader.read(BLOCK):
            f.write(data)
            hasher.update(data)
            count += len(data)
    reply = {"bytes": count, "digest": f"xxh3-128:{hasher.hexdigest()}"}
    writer.write(json.dumps(reply).encode() + b"\n")
    writer.write_eof()
    seconds = time.perf_counter() - start
    _emit(event="received", name=name, seconds=round(seconds, 6), **reply)


async def _serve(args: argparse.Namespace) -> int:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], max_datagram_size=args.datagram_size
    )
    config.load_cert_chain(args.cert, args.key)
    tasks: set[asyncio.Task[None]] = set()

    def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(_receive(reader, writer, args.dest))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await serve(args.host, args.port, configuration=config, stream_handler=stream_handler)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _emit(
        event="listening",
        address=f"{args.host}:{args.port}",
        transport="quic",
        datagram_size=args.datagram_size,
        loop=type(loop).__module__,
    )
    await stop.wait()
    server.close()
    for task in tasks:
        task.cancel()
    return 0


# --- client -------------------------------------------------------------------------------


async def _send(args: argparse.Namespace) -> int:
    path: Path = args.file
    name = args.name or path.name
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        max_datagram_size=args.datagram_size,
        verify_mode=ssl.CERT_NONE,
    )
    hasher, sent = xxhash.xxh3_128(), 0
    start = time.perf_counter()
    async with connect(args.host, args.port, configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(name.encode() + b"\n")
        with path.open("rb") as f:
            while block := f.read(BLOCK):
                hasher.update(block)
                writer.write(block)
                await writer.drain()
                sent += len(block)
        writer.write_eof()
        answer = await reader.read()  # the server answers once it has read everything
    seconds = time.perf_counter() - start
    digest = f"xxh3-128:{hasher.hexdigest()}"
    try:
        reply = json.loads(answer)
    except ValueError:
        reply = {"error": f"no answer from the server: {answer[:200]!r}"}
    ok = reply.get("bytes") == sent and reply.get("digest") == digest
    mb_per_s = round(sent / seconds / 1e6, 3)
    _emit(ok=ok, bytes=sent, seconds=round(seconds, 6), mb_per_s=mb_per_s, digest=digest,
          datagram_size=args.datagram_size, server=reply)  # fmt: skip
    return 0 if ok else 1


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_quic", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="receive files into DEST until SIGTERM or SIGINT")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    srv.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    srv.add_argument("--dest", type=Path, required=True, help="directory for received files")
    snd = sub.add_parser("send", help="send FILE and wait until the server has all of it")
    snd.add_argument("file", type=Path)
    snd.add_argument("--host", default="127.0.0.1")
    snd.add_argument("--port", type=int, required=True)
    snd.add_argument("--name", help="file name on the server [the local name]")
    for p in (srv, snd):
        p.add_argument(
            "--datagram-size",
            type=_datagram_size,
            default=DEFAULT_DATAGRAM_SIZE,
            help=f"QUIC max_datagram_size, the same on both sides [{DEFAULT_DATAGRAM_SIZE}]",
        )
        p.add_argument(
            "--loop",
            choices=("asyncio", "uvloop"),
            default=DEFAULT_LOOP,
            help=f"event loop; uvloop falls back to asyncio's if not installed [{DEFAULT_LOOP}]",
        )
    srv.set_defaults(func=_serve)
    snd.set_defaults(func=_send)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return _run(args.func(args), args.loop)
    return 130


if __name__ == "__main__":
    sys.exit(main())
