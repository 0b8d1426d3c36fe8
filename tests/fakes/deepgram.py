"""A local fake of Deepgram's live ``/v1/listen`` WebSocket, after §7 of
``docs/protocols/deepgram-live.md`` (rule numbers below are that section's).

Deterministic: every transcript decision follows audio time (bytes received), never the wall
clock, which only drives the inactivity timer. Words come from registered clips: a clip's
reference text is spread evenly over its voiced audio (RMS ≥ ``vad_rms`` in 20 ms windows), and
a word is revealed once the audio up to its end has arrived. A connection finds where its audio
sits in a clip by searching the clip for its first 100 ms, so a reconnecting client that replays
from its last final gets exactly the words not yet settled — the property the gateway's replay
must preserve. Audio that matches no clip gets turns with no words.

Faults on demand (:class:`Fault`), one per new connection, in order: refuse the handshake with
a status, answer the handshake slowly, drop the socket after N bytes, close 1011 after N bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

FRAME_MS = 20
PROBE_BYTES = 3200  # 100 ms at 16 kHz: enough to place a connection's audio in a clip
MODEL_INFO = {"name": "general-nova-3", "version": "2025-04-17.21547", "arch": "nova-3"}
MODEL_UUID = "8b7e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"
MODELS = {
    "nova-3": None,  # any language
    "nova-2": None,
    "nova-2-phonecall": {"en", "en-US"},
}
ENCODINGS = {
    "linear16",
    "linear32",
    "flac",
    "alaw",
    "mulaw",
    "amr-nb",
    "amr-wb",
    "opus",
    "ogg-opus",
    "speex",
    "g729",
}
BOOLEANS = {
    "interim_results",
    "punctuate",
    "smart_format",
    "vad_events",
    "multichannel",
    "diarize",
    "no_delay",
    "numerals",
    "filler_words",
    "profanity_filter",
}
NET0001 = (
    b"Deepgram did not receive audio data or a text message within the timeout window. "
    b"See https://dpgr.am/net0001"
)


@dataclass
class Fault:
    """What to do to one connection (the next one to arrive)."""

    reject: int | None = None  # answer this HTTP status instead of upgrading
    handshake_delay_s: float = 0.0  # answer slowly
    drop_after_bytes: int | None = None  # abort the TCP connection, no close frame (1006)
    close_1011_after_bytes: int | None = None  # close 1011 NET-0000


@dataclass
class Connection:
    """What the fake saw on one connection, for tests to assert on."""

    request_id: str
    query: dict[str, str]
    audio_bytes: int = 0
    keepalives: int = 0
    finalizes: int = 0
    closestreams: int = 0
    closed_with: int | None = None


@dataclass
class _Clip:
    pcm: bytes
    words: list[str]
    starts_ms: list[float]  # clip time of each word's slice
    ends_ms: list[float]

    @classmethod
    def build(cls, pcm: bytes, text: str, vad_rms: float, rate: int) -> _Clip:
        words = text.split()
        win = rate * FRAME_MS // 1000
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        n = len(x) // win
        voiced = np.sqrt((x[: n * win].reshape(n, win) ** 2).mean(axis=1)) >= vad_rms
        cum = np.cumsum(voiced) * FRAME_MS  # voiced ms up to the end of each window
        word_ms = cum[-1] / len(words)
        starts, ends = [], []
        for k in range(len(words)):
            # the window in which the k-th slice starts, and the one in which it completes
            first = int(np.searchsorted(cum, k * word_ms, side="right"))
            last = int(np.searchsorted(cum, (k + 1) * word_ms - 1e-6, side="left"))
            starts.append(float(first * FRAME_MS))
            ends.append(float((last + 1) * FRAME_MS))
        return cls(pcm, words, starts, ends)


@dataclass
class _Turn:
    """Per-connection transcript state (rule 9), all times in this connection's ms."""

    cursor: float = 0.0
    seg_start: float = 0.0
    open: bool = False
    silence: float = 0.0
    last_emit: float = 0.0
    unsettled: list[tuple[str, float, float]] = field(default_factory=list)
    last_word_end: float | None = None
    utterance_end_sent: bool = True


class FakeDeepgram:
    """The fake server. ``app()`` gives the aiohttp application; knobs as in §7."""

    def __init__(
        self,
        *,
        api_keys: frozenset[str] = frozenset({"test-key"}),
        vad_rms: float = 500.0,
        interim_interval_ms: float = 1000.0,
        max_segment_ms: float = 4000.0,
        emit_empty_interims: bool = True,
        inactivity_timeout_s: float = 10.0,
        finalize_speech_final: bool = True,
        max_sessions: int | None = None,
        bad_audio_prefix: bytes = b"\xde\xadBAD",
    ) -> None:
        self.api_keys = api_keys
        self.vad_rms = vad_rms
        self.interim_interval_ms = interim_interval_ms
        self.max_segment_ms = max_segment_ms
        self.emit_empty_interims = emit_empty_interims
        self.inactivity_timeout_s = inactivity_timeout_s
        self.finalize_speech_final = finalize_speech_final
        self.max_sessions = max_sessions
        self.bad_audio_prefix = bad_audio_prefix
        self.faults: deque[Fault] = deque()
        self.url = ""  # ws://host:port, set by whoever serves app()
        self.connections: list[Connection] = []
        self.connected = asyncio.Event()  # set at the first upgraded connection
        self.active = 0
        self._clips: list[_Clip] = []

    def add_clip(self, pcm: bytes, text: str, sample_rate: int = 16_000) -> None:
        """Register audio whose words the fake will "recognise": ``text``, spread over it."""
        self._clips.append(_Clip.build(pcm, text, self.vad_rms, sample_rate))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        return app

    # -- handshake (rules 1-5) -------------------------------------------------------------

    def _refuse(self, status: int, message: str, err_code: str, rid: str) -> web.Response:
        body = {"err_code": err_code, "err_msg": message, "request_id": rid}
        return web.json_response(
            body, status=status, headers={"dg-request-id": rid, "dg-error": message}
        )

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("token", "bearer"):
            return key.strip() in self.api_keys
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        ]
        return (
            len(protocols) >= 2
            and protocols[0] in ("token", "bearer")
            and protocols[1] in self.api_keys
        )

    def _bad_param(self, q: dict[str, str]) -> str | None:
        model = q.get("model")
        if model not in MODELS:
            return f"Invalid 'model' value of '{model}'."
        for key in BOOLEANS & q.keys():
            if q[key] not in ("true", "false"):
                return f"Invalid '{key}' value of '{q[key]}'."
        if "encoding" in q:
            if q["encoding"] not in ENCODINGS:
                return f"Invalid 'encoding' value of '{q['encoding']}'."
            if not q.get("sample_rate", "").isdigit() or int(q["sample_rate"]) <= 0:
                return "'sample_rate' is required with 'encoding'."
        ep = q.get("endpointing")
        if ep is not None and not (ep.isdigit() or ep in ("true", "false")):
            return f"Invalid 'endpointing' value of '{ep}'."
        ue = q.get("utterance_end_ms")
        if ue is not None and not (ue.isdigit() and 1000 <= int(ue) <= 5000):
            return f"Invalid 'utterance_end_ms' value of '{ue}'."
        allowed = MODELS[model]
        language = q.get("language", "en")
        if (allowed is not None and language not in allowed) or not (
            2 <= len(language) <= 8
            and language.replace("-", "").isalnum()
            and language.split("-")[0].islower()
            and len(language.split("-")[0]) <= 3
        ):
            return f"No such model/language/tier combination found: {model}/{language}."
        return None

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        rid = str(uuid.uuid4())
        query = dict(request.query)
        fault = self.faults.popleft() if self.faults else Fault()
        if fault.handshake_delay_s:
            await asyncio.sleep(fault.handshake_delay_s)
        if not self._authorised(request):
            return self._refuse(401, "Invalid credentials.", "INVALID_AUTH", rid)
        if fault.reject == 401:
            return self._refuse(401, "Invalid credentials.", "INVALID_AUTH", rid)
        if fault.reject == 429 or (
            self.max_sessions is not None and self.active >= self.max_sessions
        ):
            return self._refuse(
                429, "Too many requests: concurrency limit reached.", "TOO_MANY_REQUESTS", rid
            )
        if fault.reject is not None:
            return self._refuse(fault.reject, "Service unavailable.", "SERVICE_UNAVAILABLE", rid)
        if (problem := self._bad_param(query)) is not None:
            return self._refuse(400, problem, "INVALID_QUERY_PARAMETER", rid)

        conn = Connection(request_id=rid, query=query)
        self.connections.append(conn)
        ws = web.WebSocketResponse(protocols=("token", "bearer"), heartbeat=None)
        ws.headers["dg-request-id"] = rid
        await ws.prepare(request)
        self.connected.set()
        self.active += 1
        try:
            await _Session(self, ws, conn, fault, request).run()
        finally:
            self.active -= 1
        return ws


class _Session:
    """One upgraded connection (rules 6-16)."""

    def __init__(
        self,
        fake: FakeDeepgram,
        ws: web.WebSocketResponse,
        conn: Connection,
        fault: Fault,
        request: web.Request,
    ) -> None:
        q = conn.query
        self.fake, self.ws, self.conn, self.fault, self.request = fake, ws, conn, fault, request
        self.rate = int(q.get("sample_rate", "16000"))
        self.interim = q.get("interim_results") == "true"
        self.vad_events = q.get("vad_events") == "true"
        self.punctuate = q.get("punctuate") == "true" or q.get("smart_format") == "true"
        ep = q.get("endpointing", "10")
        self.endpointing = None if ep == "false" else (10.0 if ep == "true" else float(ep))
        ue = q.get("utterance_end_ms")
        self.utterance_end = float(ue) if ue and self.interim else None
        self.created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.window_bytes = self.rate * FRAME_MS // 1000 * 2
        self.pending = bytearray()  # received audio not yet processed
        self.clip: _Clip | None = None
        self.placed = False
        self.p0_ms = 0.0  # clip time of this connection's first sample
        self.next_word = 0
        self.turn = _Turn()
        self.received_audio = False
        self.done = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fake.inactivity_timeout_s
        while not self.done:
            try:
                msg = await self.ws.receive(timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                await self._send(self._metadata())
                await self._close(1011, NET0001)  # rule 7
                return
            deadline = loop.time() + self.fake.inactivity_timeout_s
            if msg.type == WSMsgType.BINARY:
                await self._audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await self._text(msg.data)
            else:
                return

    # -- client frames ---------------------------------------------------------------------

    async def _audio(self, data: bytes) -> None:
        if not data:
            await self._close_stream()  # rule 8: an empty frame is CloseStream
            return
        if data.startswith(self.fake.bad_audio_prefix):
            await self._send(self._metadata())
            await self._close(1008, b"DATA-0000: the payload cannot be decoded as audio")
            return
        self.conn.audio_bytes += len(data)
        self.received_audio = True
        self.pending += data
        if not self.placed and len(self.pending) >= PROBE_BYTES:
            self._place()
        if self.placed:
            await self._windows()
        f = self.fault
        if f.drop_after_bytes is not None and self.conn.audio_bytes >= f.drop_after_bytes:
            assert self.request.transport is not None
            self.request.transport.abort()  # rule 16: 1006 on the client side
            self.done = True
        elif (
            f.close_1011_after_bytes is not None
            and self.conn.audio_bytes >= f.close_1011_after_bytes
        ):
            await self._close(1011, b"NET-0000: the service did not produce output in time")

    async def _text(self, data: str) -> None:
        try:
            kind = json.loads(data).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind == "KeepAlive":
            self.conn.keepalives += 1
        elif kind == "Finalize":
            self.conn.finalizes += 1
            await self._flush_all()
            await self._finalize(from_finalize=True, speech_final=self.fake.finalize_speech_final)
        elif kind == "CloseStream":
            await self._close_stream()
        else:
            await self._send(
                {
                    "type": "Error",
                    "variant": "SchemaError",
                    "description": "unknown or malformed message",
                    "message": data,
                }
            )

    async def _close_stream(self) -> None:
        self.conn.closestreams += 1
        await self._flush_all()
        await self._finalize(from_finalize=False, speech_final=False)  # rule 12
        await self._send(self._metadata())
        await self._close(1000, b"")

    # -- audio time (rules 8-10) -------------------------------------------------------------

    def _place(self) -> None:
        self.placed = True
        probe = bytes(self.pending[:PROBE_BYTES])
        for clip in self.fake._clips:
            at = clip.pcm.find(probe)
            while at >= 0 and at % 2:
                at = clip.pcm.find(probe, at + 1)
            if at >= 0:
                self.clip = clip
                self.p0_ms = at / 2 / self.rate * 1000
                # Words that ended before this connection's audio were settled earlier.
                self.next_word = sum(1 for e in clip.ends_ms if e <= self.p0_ms + 1e-6)
                return

    async def _flush_all(self) -> None:
        """Process every whole window received, and place a short stream first."""
        if not self.placed and self.pending:
            self._place()
        await self._windows()

    async def _windows(self) -> None:
        t = self.turn
        while len(self.pending) >= self.window_bytes:
            window = np.frombuffer(bytes(self.pending[: self.window_bytes]), dtype="<i2")
            del self.pending[: self.window_bytes]
            voiced = math.sqrt(float(np.mean(window.astype(np.float64) ** 2))) >= self.fake.vad_rms
            start = t.cursor
            t.cursor += FRAME_MS
            if voiced:
                t.silence = 0.0
                if not t.open:
                    t.open = True
                    if self.vad_events:
                        await self._send(
                            {
                                "type": "SpeechStarted",
                                "channel": [0, 1],
                                "timestamp": round(start / 1000, 3),
                            }
                        )
            elif t.open:
                t.silence += FRAME_MS
            self._reveal()
            if (
                t.open
                and self.endpointing is not None
                and t.silence >= max(self.endpointing, FRAME_MS)
            ):
                await self._final(speech_final=True, from_finalize=False)
                t.open = False
                t.utterance_end_sent = False
            elif t.open and t.cursor - t.seg_start >= self.fake.max_segment_ms:
                await self._final(speech_final=False, from_finalize=False)
            elif self.interim and t.cursor - t.last_emit >= self.fake.interim_interval_ms:
                if t.unsettled or self.fake.emit_empty_interims:
                    await self._send(self._results(t.unsettled, is_final=False))
                t.last_emit = t.cursor
            await self._maybe_utterance_end()

    def _reveal(self) -> None:
        clip, t = self.clip, self.turn
        if clip is None:
            return
        now = self.p0_ms + t.cursor
        while self.next_word < len(clip.words) and clip.ends_ms[self.next_word] <= now + 1e-6:
            k = self.next_word
            self.next_word += 1
            start = max(0.0, clip.starts_ms[k] - self.p0_ms)
            end = clip.ends_ms[k] - self.p0_ms
            t.unsettled.append((clip.words[k], start, end))
            t.last_word_end = end
            t.utterance_end_sent = False

    async def _maybe_utterance_end(self) -> None:
        t = self.turn
        if (
            self.utterance_end is not None
            and not t.utterance_end_sent
            and t.last_word_end is not None
            and t.cursor - t.last_word_end >= self.utterance_end
        ):
            t.utterance_end_sent = True
            await self._send(
                {
                    "type": "UtteranceEnd",
                    "channel": [0, 1],
                    "last_word_end": round(t.last_word_end / 1000, 3),
                }
            )

    async def _final(self, *, speech_final: bool, from_finalize: bool) -> None:
        t = self.turn
        await self._send(
            self._results(
                t.unsettled, is_final=True, speech_final=speech_final, from_finalize=from_finalize
            )
        )
        t.unsettled = []
        t.seg_start = t.last_emit = t.cursor

    async def _finalize(self, *, from_finalize: bool, speech_final: bool) -> None:
        """Rule 11: settle what is pending, if any audio is unsettled."""
        t = self.turn
        if t.cursor > t.seg_start:
            await self._final(speech_final=speech_final, from_finalize=from_finalize)
            t.open = False

    # -- server frames (rules 13, 15) -------------------------------------------------------

    def _results(
        self,
        words: list[tuple[str, float, float]],
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        t = self.turn
        out_words = []
        for i, (w, s, e) in enumerate(words):
            item: dict[str, Any] = {
                "word": w,
                "start": round(s / 1000, 3),
                "end": round(e / 1000, 3),
                "confidence": 0.98,
            }
            if self.punctuate:
                p = w.capitalize() if i == 0 else w
                item["punctuated_word"] = p + ("." if speech_final and i == len(words) - 1 else "")
            out_words.append(item)
        key = "punctuated_word" if self.punctuate else "word"
        transcript = " ".join(str(w[key]) for w in out_words)
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round((t.cursor - t.seg_start) / 1000, 3),
            "start": round(t.seg_start / 1000, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {
                        "transcript": transcript,
                        "confidence": 0.98 if words else 0.0,
                        "words": out_words,
                    }
                ]
            },
            "metadata": {
                "request_id": self.conn.request_id,
                "model_info": MODEL_INFO,
                "model_uuid": MODEL_UUID,
            },
            "from_finalize": from_finalize,
        }

    def _metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.conn.request_id,
            "sha256": "incomplete",
            "created": self.created,
            "duration": round(self.turn.cursor / 1000, 3),
            "channels": 1 if self.received_audio else 0,
        }
        if self.received_audio:
            meta["models"] = [MODEL_UUID]
            meta["model_info"] = {MODEL_UUID: MODEL_INFO}
        return meta

    async def _send(self, payload: dict[str, Any]) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(json.dumps(payload))

    async def _close(self, code: int, reason: bytes) -> None:
        self.conn.closed_with = code
        self.done = True
        await self.ws.close(code=code, message=reason)
