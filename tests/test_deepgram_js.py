"""Deepgram's JavaScript SDK (``@deepgram/sdk`` 4.x, ``tests/js``) on Debian's ``node``, pointed
at the gateway's ``/v1/listen`` with nothing but its base URL and a key."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from tests.audio_files import AUDIO_DIR, clips
from tests.conftest import StartGateway
from tests.gateway_client import SDK_SPEED, sessions_live_every_clip
from tests.test_deepgram_sdk import KEY
from tests.timing import budget

JS_DIR = Path(__file__).parent / "js"


async def run_node(*args: str, node_flags: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Run ``tests/js/deepgram_live.mjs`` (its npm packages installed by the README's test
    command: ``npm ci --prefix tests/js``); one JSON object per file it streamed."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        *node_flags,
        "deepgram_live.mjs",
        *args,
        cwd=JS_DIR,
        env=os.environ | {"STREAM_SPEED": str(SDK_SPEED)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), budget(300))
    assert proc.returncode == 0, err.decode()
    assert not err.strip(), f"the SDK warned: {err.decode()}"
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_the_js_sdk_streams_every_clip_and_every_callback_fires(
    start_gateway: StartGateway,
) -> None:
    """Engine whisper: each shared clip in paced 20 ms frames; the SDK's own callbacks
    fire (open, interim and final transcripts, speech started, utterance end, metadata,
    close), nothing unhandled or in error, and the joined finals equal our /sessions
    WebSocket's transcript of the same clip on the same engine."""
    # Finals are compared, not their timing: a busy box may take long over a Whisper pass.
    gateway = await start_gateway(api_keys=KEY, whisper_pass_timeout_s=120.0)
    key = KEY.split(":", 1)[1]
    files = [str(AUDIO_DIR / f"{c.name}.wav") for c in clips()]

    js, sessions = await asyncio.gather(
        run_node(gateway.base, key, "whisper", *files),
        sessions_live_every_clip(gateway.base, key, "whisper"),
    )
    assert [r["name"] for r in js] == [c.name for c in clips()]
    for r in js:
        print(f"\n{r['name']}: js {r['text']!r} | /sessions {sessions[r['name']]!r}")
        assert r["errors"] == [], r["name"]
        assert r["code"] == 1000, r["name"]
        seen = r["seen"]
        for callback in ("open", "interim", "final", "speech_started", "utterance_end"):
            assert seen.get(callback, 0) >= 1, (r["name"], callback, seen)
        assert (seen["metadata"], seen["close"]) == (1, 1), (r["name"], seen)
        assert r["text"] == sessions[r["name"]], r["name"]


async def test_the_js_sdk_on_nodes_built_in_websocket_gets_every_final_metadata_and_close_1000(
    start_gateway: StartGateway,
) -> None:
    """With a runtime WebSocket (Node 20's ``--experimental-websocket``, undici: what browsers
    and Node 22 give the SDK) the SDK uses it instead of the ``ws`` package. That WebSocket
    negotiated permessage-deflate and then failed on the gateway's compressed frames (close
    1006 a few messages in: the last finals and Metadata lost); every clip now ends whole."""
    gateway = await start_gateway(api_keys=KEY)
    key = KEY.split(":", 1)[1]
    files = [str(AUDIO_DIR / f"{c.name}.wav") for c in clips()]
    js, sessions = await asyncio.gather(
        run_node(gateway.base, key, "local", *files, node_flags=("--experimental-websocket",)),
        sessions_live_every_clip(gateway.base, key, "local"),
    )
    assert [r["name"] for r in js] == [c.name for c in clips()]
    for r in js:
        assert r["errors"] == [], r["name"]
        assert r["code"] == 1000, (r["name"], r["seen"])
        assert (r["seen"]["metadata"], r["seen"]["close"]) == (1, 1), (r["name"], r["seen"])
        assert r["text"] == sessions[r["name"]], r["name"]
