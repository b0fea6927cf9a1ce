"""The two ways an event leaves the daemon: a command given the event's JSON on stdin, and an
HTTP POST of it signed with HMAC-SHA256 (header `X-Fluxd-Signature: sha256=HEX`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Executor
from typing import Any

__all__ = ["SIGNATURE_HEADER", "HookFailed", "post", "run_command", "sign"]

SIGNATURE_HEADER = "X-Fluxd-Signature"


class HookFailed(Exception):
    """One delivery did not succeed; the message says why (for the log)."""


def sign(key: bytes, body: bytes) -> str:
    """The signature header's value for `body`: `sha256=` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


async def run_command(argv: tuple[str, ...], body: bytes, event_id: str, timeout: float) -> None:
    """Run `argv` with `body` on stdin; exit status 0 within `timeout` seconds is delivered.

    The process is killed when it overruns (or the daemon stops delivering).

    Raises:
        HookFailed: it could not start, failed, or overran.
    """
    env = os.environ | {"FLUXD_EVENT_ID": event_id}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
    except OSError as exc:
        raise HookFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout):
            await proc.communicate(body)
    except TimeoutError:
        raise HookFailed(f"command took longer than {timeout:g}s; killed") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        raise HookFailed(f"command exited with status {proc.returncode}")


async def post(
    url: str, body: bytes, key: bytes, event_id: str, timeout: float, pool: Executor
) -> None:
    """POST `body` to `url` with its signature; any 2xx answer within `timeout` is delivered.

    Raises:
        HookFailed: no connection, no answer in time, or another status.
    """
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(pool, _post, url, body, key, event_id, timeout)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: urllib would follow a POST's 301/302/303 with a GET
    without the body (and send the event's headers to wherever it points)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def shown(url: str) -> str:
    """`url` for a log line or an error: scheme, host and port only (its path or user part may
    hold a secret, as a webhook's often does)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/..."


def _post(url: str, body: bytes, key: bytes, event_id: str, timeout: float) -> None:
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(key, body),
        "X-Fluxd-Event-Id": event_id,
        "User-Agent": "fluxd",
    }
    # The config allows only http:// and https:// URLs.
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # its answer's connection
        raise HookFailed(f"{shown(url)} answered {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise HookFailed(f"{shown(url)}: {reason}") from None
