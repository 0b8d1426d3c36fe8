"""Streams WAV files to a gateway's /v1/listen with Deepgram's Python SDK 3.x (the line many
apps and frameworks still pin), configured with nothing but the gateway's URL and a key, in
real-time 20 ms frames. Prints one JSON line per file: the callbacks that fired, the joined
finals, the session id, any error.

Run with the 3.x SDK first on the path (it cannot share an environment with 7.x):
``PYTHONPATH=<3.x install> python deepgram_v3.py <base url> <key> <engine> <file.wav>...``
"""

import asyncio
import json
import os
import sys
import time
import wave
from collections import Counter
from pathlib import Path

from deepgram import (
    DeepgramClient,
    DeepgramClientOptions,
    LiveOptions,
    LiveTranscriptionEvents,
)


async def transcribe(client, path, engine):
    with wave.open(path) as w:
        pcm = w.readframes(w.getnframes())
    seen = Counter()
    finals, errors, ids = [], [], set()
    finalized = asyncio.Event()
    conn = client.listen.asyncwebsocket.v("1")

    async def on_open(_conn, _open, **_kw):
        seen["open"] += 1

    async def on_transcript(_conn, result, **_kw):
        seen["final" if result.is_final else "interim"] += 1
        ids.add(result.metadata.request_id)
        text = result.channel.alternatives[0].transcript
        if result.is_final and text:
            finals.append(text)
        if result.from_finalize:
            finalized.set()

    async def count(name, *_args, **_kw):
        seen[name] += 1

    async def on_error(_conn, error, **_kw):
        errors.append(f"error: {error}")

    async def on_unhandled(_conn, unhandled, **_kw):
        errors.append(f"unhandled: {unhandled}")

    conn.on(LiveTranscriptionEvents.Open, on_open)
    conn.on(LiveTranscriptionEvents.Transcript, on_transcript)
    conn.on(LiveTranscriptionEvents.Metadata, lambda *a, **k: count("metadata"))
    conn.on(LiveTranscriptionEvents.SpeechStarted, lambda *a, **k: count("speech_started"))
    conn.on(LiveTranscriptionEvents.UtteranceEnd, lambda *a, **k: count("utterance_end"))
    conn.on(LiveTranscriptionEvents.Close, lambda *a, **k: count("close"))
    conn.on(LiveTranscriptionEvents.Error, on_error)
    conn.on(LiveTranscriptionEvents.Unhandled, on_unhandled)
    options = LiveOptions(
        model="nova-3",
        language="en",
        encoding="linear16",
        sample_rate=16000,
        interim_results=True,
        utterance_end_ms="1000",
        vad_events=True,
    )
    if not await conn.start(options, addons={"engine": engine}):
        return {"name": Path(path).stem, "errors": ["start failed"]}
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), 640)):
        await asyncio.sleep(max(0.0, start + n * 0.02 / SPEED - time.monotonic()))
        await conn.send(pcm[i : i + 640])
    # finish() closes 0.5 s after CloseStream: finalize first, so no final comes later.
    await conn.finalize()
    try:
        await asyncio.wait_for(finalized.wait(), 60)
    except TimeoutError:
        errors.append("no from_finalize final within 60 s")
    await conn.finish()
    return {
        "name": Path(path).stem,
        "seen": dict(seen),
        "text": " ".join(finals),
        "request_ids": sorted(ids),
        "errors": errors,
    }


SPEED = float(os.environ.get("STREAM_SPEED", "1"))
"""Times real time the frames are paced at."""


async def main() -> None:
    base, key, engine, *files = sys.argv[1:]
    client = DeepgramClient(key, DeepgramClientOptions(url=base))
    for path in files:
        print(json.dumps(await transcribe(client, path, engine)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
