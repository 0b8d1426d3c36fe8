"""Deepgram's Python SDK 3.x (``deepgram-sdk==3.11.0``, the line many apps and frameworks still
pin: its dataclass parser requires ``channel`` and ``metadata.model_info`` in every
``Results``) against ``/v1/listen``. It cannot share an environment with 7.x: the README's
test command installs it into ``.venv/sdk3`` and ``tests/clients/deepgram_v3.py`` runs there."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.audio_files import AUDIO_DIR, clips
from tests.conftest import StartGateway
from tests.gateway_client import SDK_SPEED, sessions_live_every_clip
from tests.test_deepgram_sdk import KEY
from tests.timing import budget

ROOT = Path(__file__).resolve().parents[1]
SDK3 = ROOT / ".venv" / "sdk3"


async def run_v3(*args: str) -> list[dict[str, Any]]:
    """Run ``tests/clients/deepgram_v3.py`` with the 3.x SDK first on the path."""
    assert (SDK3 / "deepgram").is_dir(), "deepgram-sdk 3.x is not installed in .venv/sdk3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests" / "clients" / "deepgram_v3.py"),
        *args,
        env=os.environ | {"PYTHONPATH": str(SDK3), "STREAM_SPEED": str(SDK_SPEED)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), budget(300))
    assert proc.returncode == 0, err.decode()
    # The SDK prints a line of its own at finish(); every result line is JSON.
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def test_the_3x_sdk_streams_every_clip_and_parses_every_message(
    start_gateway: StartGateway,
) -> None:
    """Engine whisper, each shared clip in paced 20 ms frames: the 3.x SDK's callbacks
    fire (open, transcripts, speech started, utterance end, metadata, close) with no error or
    unhandled message, and its finals equal our /sessions transcript of the same clip."""
    # Finals are compared, not their timing: a busy box may take long over a Whisper pass.
    gateway = await start_gateway(api_keys=KEY, whisper_pass_timeout_s=120.0)
    key = KEY.split(":", 1)[1]
    files = [str(AUDIO_DIR / f"{c.name}.wav") for c in clips()]

    v3, sessions = await asyncio.gather(
        run_v3(gateway.base, key, "whisper", *files),
        sessions_live_every_clip(gateway.base, key, "whisper"),
    )
    assert [r["name"] for r in v3] == [c.name for c in clips()]
    for r in v3:
        print(f"\n{r['name']}: 3.x {r['text']!r} | /sessions {sessions[r['name']]!r}")
        assert r["errors"] == [], r["name"]
        seen = r["seen"]
        for callback in ("open", "interim", "final", "speech_started", "utterance_end", "close"):
            assert seen.get(callback, 0) >= 1, (r["name"], callback, seen)
        assert seen["metadata"] == 1, (r["name"], seen)
        assert len(r["request_ids"]) == 1, r["name"]
        assert r["text"] == sessions[r["name"]], r["name"]
