"""The stt-gateway CLI against a live gateway: stream a shared WAV, follow a session."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.audio_convert import convert
from tests.audio_files import AUDIO_DIR, clip
from tests.conftest import Gateway, ServerFactory, StartGateway, direct_finals
from tests.fakes.openai_chat import KEY, FakeChat, summary_of
from tests.gateway_client import create_session, over_ws
from tests.timing import budget


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else os.environ | env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), budget(120))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_stream_prints_the_finals_of_a_shared_wav(gateway: Gateway) -> None:
    c = clip("librivox-sns-0920")
    code, out, err = await run_cli(
        "stream", str(AUDIO_DIR / f"{c.name}.wav"), "--url", gateway.base, "--fast"
    )
    assert code == 0, err
    expected = [f.text for f in direct_finals(c)]
    assert out.splitlines() == expected


async def test_cli_stream_json_gives_every_event_in_seq_order(gateway: Gateway) -> None:
    c = clip("goforward")
    code, out, err = await run_cli(
        "stream", str(AUDIO_DIR / f"{c.name}.wav"), "--url", gateway.base, "--fast", "--json"
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event_type"] == "session_end"
    assert " ".join(e["data"]["text"] for e in events if e["event_type"] == "final") == " ".join(
        f.text for f in direct_finals(c)
    )


async def test_cli_follow_prints_a_sessions_finals(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("librivox-sns-0880")
    session = await create_session(http, gateway.base)
    follower = asyncio.create_task(run_cli("follow", session["session_id"], "--url", gateway.base))
    async with http.post(
        session["audio_url"], data=c.pcm, headers={"Content-Type": "application/octet-stream"}
    ):
        pass
    async with http.delete(f"{gateway.base}/sessions/{session['session_id']}") as resp:
        transcript = (await resp.json())["transcript"]
    code, out, err = await follower
    assert code == 0, err
    assert " ".join(out.splitlines()) == transcript
    code, out, _ = await run_cli("follow", "no-such-session", "--url", gateway.base)
    assert code == 2


async def test_serve_with_bad_settings_exits_2_with_one_line_per_setting() -> None:
    code, _, err = await run_cli(
        "--port",
        "0",
        env={"STT_GATEWAY_MAX_SESSIONS": "abc", "STT_GATEWAY_CORS_ORIGINS": "evil"},
    )
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert any(line.startswith("stt-gateway: STT_GATEWAY_MAX_SESSIONS: ") for line in lines)
    assert any("STT_GATEWAY_CORS_ORIGINS" in line and "'evil'" in line for line in lines)


async def serve_until_logged(args: list[str], env: dict[str, str], wanted: str) -> str:
    """Start ``stt-gateway serve``; return its log once a line holds ``wanted``; stop it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_gateway",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | env,
    )
    assert proc.stderr is not None
    log = ""
    try:
        async with asyncio.timeout(budget(60)):
            while wanted not in log:
                line = await proc.stderr.readline()
                assert line, f"the gateway exited ({await proc.wait()}): {log}"
                log += line.decode()
    finally:
        proc.terminate()
        await proc.wait()
    return log


async def test_protected_mode_refuses_a_public_address_without_a_key() -> None:
    code, _, err = await run_cli("--host", "0.0.0.0", "--port", "0")
    assert code == 2
    assert "Traceback" not in err
    assert "STT_GATEWAY_API_KEYS" in err
    assert "--no-auth" in err
    assert "Running on" not in err  # refused before binding

    log = await serve_until_logged(
        ["--host", "0.0.0.0", "--port", "0", "--no-auth"], {}, "Running on"
    )
    assert "auth off (--no-auth)" in log

    secret = "s3cret-never-logged"
    log = await serve_until_logged(
        ["--host", "0.0.0.0", "--port", "0"],
        {"STT_GATEWAY_API_KEYS": f"ops:{secret},ci:other-{secret}"},
        "Running on",
    )
    assert "auth on: 2 API key(s) (ops, ci)" in log
    assert secret not in log


async def test_an_llm_endpoint_without_a_model_or_scheme_stops_the_start() -> None:
    for env, says in (
        ({"STT_GATEWAY_LLM_URL": "http://127.0.0.1:11434/v1"}, "STT_GATEWAY_LLM_MODEL"),
        ({"STT_GATEWAY_LLM_URL": "127.0.0.1:11434", "STT_GATEWAY_LLM_MODEL": "m"}, "LLM_URL"),
    ):
        code, _, err = await run_cli("--port", "0", env=env)
        assert code == 2
        assert says in err
        assert "Traceback" not in err


async def test_a_malformed_key_setting_names_the_variable_not_the_secret() -> None:
    code, _, err = await run_cli("--port", "0", env={"STT_GATEWAY_API_KEYS": "no-colon-secret"})
    assert code == 2
    assert "STT_GATEWAY_API_KEYS" in err
    assert "id:secret" in err
    assert "no-colon-secret" not in err


@pytest.mark.parametrize(
    ("name", "flags"),
    [("ogg-opus", []), ("mp3", []), ("mulaw", ["--encoding", "mulaw", "--rate", "8000"])],
)
async def test_cli_stream_sends_any_file_as_it_is(
    gateway: Gateway, http: aiohttp.ClientSession, tmp_path: Path, name: str, flags: list[str]
) -> None:
    """A container file (or raw telephony audio with its flags) goes to the gateway unchanged,
    so the gateway's decoder is what hears it: the CLI prints what a WebSocket client sending
    the same bytes gets."""
    c = clip("librivox-sns-0890")
    audio = convert(c, name)
    path = tmp_path / f"{c.name}.{name}"
    path.write_bytes(audio.data)
    code, out, err = await run_cli("stream", str(path), "--url", gateway.base, "--fast", *flags)
    assert code == 0, err
    same_bytes = await over_ws(http, gateway.base, audio, seed=1)
    assert out.split() == same_bytes.finals_text().split()
    assert out.strip()


async def test_cli_stream_summary_prints_the_llm_summary_after_the_transcript(
    start_gateway: StartGateway, aiohttp_server: ServerFactory
) -> None:
    chat = FakeChat()
    llm = await aiohttp_server(chat.app())
    gateway = await start_gateway(
        llm_url=str(llm.make_url("/v1")), llm_model="fake-model", llm_api_key=KEY
    )
    c = clip("librivox-sns-0920")
    code, out, err = await run_cli(
        "stream", str(AUDIO_DIR / f"{c.name}.wav"), "--url", gateway.base, "--fast", "--summary"
    )
    assert code == 0, err
    *finals, summary = out.splitlines()
    assert finals == [f.text for f in direct_finals(c)]
    assert summary == "Summary: " + summary_of(chat.requests[0]["messages"][-1]["content"])
