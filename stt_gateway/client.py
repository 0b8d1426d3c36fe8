"""Command-line clients of a running gateway: ``stream`` a file, ``follow`` a session.

Both print interims in place and finals as lines on a terminal, or one JSON event per line
with ``--json`` (for scripts). ``stream`` shows the file position as a progress bar on the
same status line as the interim.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import av

from .audio.sniff import SNIFF_BYTES, Container, sniff

FRAME_MS = 20


@dataclass(frozen=True)
class AudioFile:
    """A file to stream, as it is: its bytes, the session config they need, and how fast
    they go at real time.

    Attributes:
        data: the file's bytes, unchanged (a container is decoded by the gateway).
        config: session config keys for it (``encoding``, ``sample_rate``, ``channels`` of
            raw audio; none for a container).
        bytes_per_s: bytes per second of audio (for pacing; 0: unknown, sent unpaced).
        frame_bytes: a chunk must hold a multiple of this many bytes (raw frames).
        container: the container's name, or None for raw audio.
    """

    data: bytes
    config: dict[str, Any]
    bytes_per_s: float
    frame_bytes: int
    container: str | None


def read_audio(path: Path, encoding: str, rate: int, channels: int) -> AudioFile:
    """``path`` as the gateway will take it: a container (WAV, Ogg, WebM, MP3, FLAC; known by
    its first bytes, paced by the duration PyAV reads from it), or raw audio of ``encoding``
    at ``rate`` Hz with ``channels`` interleaved.

    Raises:
        ValueError: bytes that are no audio the gateway takes (a zip, an MP4, …).
    """
    data = path.read_bytes()
    what = sniff(data[:SNIFF_BYTES])
    if isinstance(what, str):
        raise ValueError(f"{path}: these bytes look like {what}, not audio")
    if isinstance(what, Container):
        try:
            with av.open(str(path)) as box:
                seconds = (box.duration or 0) / av.time_base
        except av.FFmpegError:
            seconds = 0.0  # the gateway says what is wrong with it
        return AudioFile(data, {}, len(data) / seconds if seconds else 0.0, 1, what.name)
    sample_bytes = 2 if encoding == "linear16" else 1
    config = {"encoding": encoding, "sample_rate": rate, "channels": channels}
    frame = sample_bytes * channels
    return AudioFile(data, config, float(rate * frame), frame, None)


class Printer:
    """Shows events. On a terminal: one status line (file progress and the current interim,
    rewritten in place) with finals printed above it as lines (then "Summary: …" if the session
    asked for one). Piped: the same lines.
    With ``as_json``: every event as one JSON line."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self._out = out
        self._json = as_json
        self._tty = out.isatty() and not as_json
        self._progress = ""
        self._interim = ""

    def event(self, raw: str) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(raw)
        kind, data = event["event_type"], event.get("data", {})
        if self._json:
            print(raw, file=self._out, flush=True)
        elif kind == "token":
            self._interim = data["text"]
            self._status()
        elif kind == "final":
            self._interim = ""
            self._line(data["text"])
        elif kind == "summary":
            self._line(f"Summary: {data['text']}")
        elif kind == "error":
            print(f"[{data['code']}] {data['message']}", file=sys.stderr, flush=True)
        return event

    def progress(self, done_s: float, total_s: float) -> None:
        """File position as a bar on the status line (terminals only)."""
        width = 24
        filled = int(width * done_s / total_s) if total_s else width
        self._progress = f"[{'#' * filled}{'.' * (width - filled)}] {done_s:5.1f}/{total_s:.1f} s"
        self._status()

    def done(self) -> None:
        """Clear the status line."""
        if self._tty:
            self._out.write("\r\x1b[2K")
            self._out.flush()

    def _line(self, text: str) -> None:
        if self._tty:
            self._out.write("\r\x1b[2K")
        print(text, file=self._out, flush=True)
        self._status()

    def _status(self) -> None:
        if not self._tty:
            return
        # One screen line, or \r cannot rewrite it: keep the newest words of the interim.
        room = shutil.get_terminal_size().columns - len(self._progress) - 4
        text = self._interim if len(self._interim) <= room else "…" + self._interim[-room + 1 :]
        self._out.write(f"\r\x1b[2K{self._progress}  {text}".rstrip())
        self._out.flush()


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization`` for ``api_key`` (a key or token), or none."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def stream_file(
    url: str,
    path: Path,
    *,
    fast: bool,
    as_json: bool,
    raw: tuple[str, int, int] = ("linear16", 16_000, 1),
    config: dict[str, Any],
    api_key: str | None = None,
) -> int:
    """Stream ``path`` as it is (a container and all, or raw audio of ``raw``'s encoding,
    rate in Hz and channels) to a new session in 20 ms pieces (real time unless ``fast``),
    print its events until ``session_end``; returns the exit status. ``api_key`` (a key or a
    ``sessions:create`` token) is sent with every request when given."""
    try:
        audio = read_audio(path, *raw)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    printer = Printer(sys.stdout, as_json)
    async with aiohttp.ClientSession(headers=auth_headers(api_key)) as http:
        async with http.post(f"{url}/sessions", json={"config": config | audio.config}) as resp:
            body = await resp.json()
            if resp.status != 201:
                print(f"cannot create a session: {body['error']['message']}", file=sys.stderr)
                return 2
        ws = await http.ws_connect(body["ws_url"])
        ended = asyncio.Event()

        async def receive() -> None:
            async for msg in ws:
                is_text = msg.type == aiohttp.WSMsgType.TEXT
                if is_text and printer.event(msg.data)["event_type"] == "session_end":
                    ended.set()

        reader = asyncio.create_task(receive())
        data, per_s = audio.data, audio.bytes_per_s or 16_000.0
        frames_per_step = max(1, int(per_s * FRAME_MS / 1000) // audio.frame_bytes)
        step = frames_per_step * audio.frame_bytes
        total_s = len(data) / per_s
        start = time.monotonic()
        for i in range(0, len(data), step):
            if not fast and audio.bytes_per_s:
                await asyncio.sleep(max(0.0, start + i / per_s - time.monotonic()))
            await ws.send_bytes(data[i : i + step])
            if (i // step) % 10 == 0:
                printer.progress(min(total_s, (i + step) / per_s), total_s)
        printer.progress(total_s, total_s)
        await ws.send_json({"type": "close"})
        await ended.wait()
        printer.done()
        await ws.close()
        await reader
    return 0


async def follow_session(
    url: str, session_id: str, *, as_json: bool, retries: int = 10, api_key: str | None = None
) -> int:
    """Print a session's events from SSE, resuming with ``Last-Event-ID`` after a drop, until
    ``session_end``; returns the exit status. ``api_key``: a key or a read token."""
    printer = Printer(sys.stdout, as_json)
    last: str | None = None
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout, headers=auth_headers(api_key)) as http:
        for attempt in range(retries + 1):
            headers = {"Last-Event-ID": last} if last else {}
            try:
                async with http.get(f"{url}/sessions/{session_id}/stream", headers=headers) as resp:
                    if resp.status == 204:
                        return 0  # nothing after our last event: the session had ended
                    if resp.status != 200:
                        body = await resp.json()
                        print(f"cannot follow: {body['error']['message']}", file=sys.stderr)
                        return 2
                    event_id, data = None, []
                    async for raw in resp.content:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("id:"):
                            event_id = line[3:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip(" "))
                        elif not line and data:
                            event = printer.event("\n".join(data))
                            last = event_id or last
                            event_id, data = None, []
                            if event["event_type"] == "session_end":
                                return 0
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
    print("lost the session's stream; gave up reconnecting", file=sys.stderr)
    return 1


async def mint_token(
    url: str, api_key: str | None, scopes: list[str], session_id: str | None, ttl_s: int
) -> int:
    """Ask the gateway at ``url`` for a token (``POST /tokens`` with ``api_key``); print it,
    then a mic-page link carrying it in the fragment (a ``sessions:create`` token) or a
    follow link (a ``session:read`` token). Returns the exit status."""
    body: dict[str, Any] = {"scope": scopes, "ttl_s": ttl_s}
    if session_id:
        body["session_id"] = session_id
    async with (
        aiohttp.ClientSession(headers=auth_headers(api_key)) as http,
        http.post(f"{url}/tokens", json=body) as resp,
    ):
        answer = await resp.json()
    if resp.status != 201:
        print(f"cannot mint a token: {answer['error']['message']}", file=sys.stderr)
        return 2
    token = answer["access_token"]
    print(token)
    if "sessions:create" in scopes:
        print(f"{url}/#token={token}")
    elif "session:read" in scopes and session_id:
        print(f"{url}/?follow={session_id}#token={token}")
    print(f"expires in {answer['expires_in']} s", file=sys.stderr)
    return 0
