"""The pure parts, with no socket and no process: Deepgram's messages → our results and its
refusals → our errors, the ``/v1/listen`` query and audio rules, our events → Deepgram's
``Results``, and what a stream's first bytes say."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from multidict import MultiDict

from stt_gateway.audio.sniff import MP3, Container, sniff
from stt_gateway.errors import UnsupportedAudio
from stt_gateway.events import FinalData, SpeechEndData, SpeechStartData, TokenData
from stt_gateway.fronts.deepgram import wire
from stt_gateway.fronts.deepgram.params import AudioIn, frame_bytes, parse_params
from stt_gateway.fronts.deepgram.results import Encoder
from stt_gateway.fronts.deepgram.translate import Translator, close_error, handshake_error
from stt_gateway.models import SessionConfig
from stt_gateway.session import Session


def results(start: float, duration: float, text: str, *, final: bool, **extra: Any) -> str:
    words = [
        {"word": w, "start": start + i * 0.1, "end": start + i * 0.1 + 0.1, "confidence": 1.2}
        for i, w in enumerate(text.split())
    ]
    return json.dumps(
        {
            "type": "Results",
            "start": start,
            "duration": duration,
            "is_final": final,
            "speech_final": final,
            "channel": {"alternatives": [{"transcript": text, "confidence": -0.1, "words": words}]},
            **extra,
        }
    )


def test_translator_rebases_times_clamps_confidences_and_drops_replayed_finals() -> None:
    t = Translator()
    t.offset_s = 10.0  # a reconnected socket whose audio 0 is session second 10
    (interim,) = t.translate(results(0.0, 1.0, "hello", final=False))
    assert isinstance(interim, TokenData)
    assert not isinstance(interim, FinalData)
    assert (interim.start, interim.end, interim.confidence) == (10.0, 11.0, 0.0)
    (final,) = t.translate(results(0.0, 1.5, "hello there", final=True, from_finalize=True))
    assert isinstance(final, FinalData)
    assert [(w.word, w.start, w.confidence) for w in final.words] == [
        ("hello", 10.0, 1.0),
        ("there", 10.1, 1.0),
    ]
    assert (t.committed_s, t.finalize_answered) == (11.5, True)
    # The same audio replayed after a drop gives the same final again: dropped.
    assert t.translate(results(0.0, 1.5, "hello there", final=True)) == []
    assert t.translate(results(1.5, 0.5, "", final=True)) == []  # §6.11: settles, no words
    assert t.committed_s == 12.0


def test_translator_speech_turns_metadata_and_garbage() -> None:
    t = Translator()
    (started,) = t.translate('{"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.5}')
    assert started == SpeechStartData(timestamp=0.5)
    ignored = '{"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": -1}'
    assert t.translate(ignored) == []  # §3.4: already finalized
    assert t.end_of_stream() == SpeechEndData(last_word_end=0.0)  # the turn is still open
    assert t.end_of_stream() is None
    assert t.translate('{"type": "Metadata", "request_id": "rid-1"}') == []
    assert t.request_id == "rid-1"
    assert t.translate("[[[not json") == []
    assert t.translate('{"type": "SomethingNew"}') == []


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, "upstream_rejected", False),
        (401, "upstream_auth", False),
        (402, "upstream_auth", False),
        (429, "upstream_busy", True),
        (503, "upstream_unavailable", True),
    ],
)
def test_handshake_refusals_become_our_errors(status: int, code: str, retryable: bool) -> None:
    error = handshake_error(status, {"dg-error": "why", "dg-request-id": "r1"}, "")
    assert (error.code, error.retryable) == (code, retryable)
    assert "r1" in error.message


def test_close_codes_say_whether_a_reconnect_may_help() -> None:
    assert close_error(1008, "DATA-0000").code == "upstream_bad_audio"
    assert not close_error(1008, "DATA-0000").retryable
    net0001 = close_error(1011, "see https://dpgr.am/net0001")
    assert (net0001.code, net0001.retryable) == ("upstream_timeout", True)
    assert close_error(1006, "").code == "upstream_closed"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"nonsense": "1"}, "nonsense"),
        ({"interim_results": "True"}, "interim_results"),
        ({"encoding": "opus", "sample_rate": "48000"}, "opus"),
        ({"encoding": "linear16"}, "sample_rate"),
        ({"channels": "9", "encoding": "linear16", "sample_rate": "16000"}, "8 channels"),
        ({"redact": "pci"}, "redact"),
        ({"utterance_end_ms": "999", "interim_results": "true"}, "utterance_end_ms"),
    ],
)
def test_listen_query_refusals_name_what_was_wrong(query: dict[str, str], named: str) -> None:
    with pytest.raises(wire.ParamError, match=named):
        parse_params(MultiDict(query), "local")


def test_listen_query_becomes_a_session_config() -> None:
    params = parse_params(
        MultiDict(
            model="nova-3",
            language="en-US",
            encoding="mulaw",
            sample_rate="8000",
            interim_results="true",
            utterance_end_ms="1000",
            endpointing="300",
            smart_format="true",
        ),
        "whisper",
    )
    assert params.config == SessionConfig(
        engine="whisper",
        language="en-US",
        model=None,  # Deepgram's model name: the engine's own model serves
        interim_results=True,
        sample_rate=8000,
        encoding="mulaw",
        channels=1,
        endpointing_ms=300,
        utterance_end_ms=1000,
    )
    assert (params.raw, params.punctuate, params.utterance_end) == (True, True, True)
    assert frame_bytes(params) == 1
    # UtteranceEnd needs interim results (§1.4): without them it is not asked for.
    quiet = parse_params(MultiDict(utterance_end_ms="1000"), "local")
    assert (quiet.config.utterance_end_ms, quiet.utterance_end) == (None, False)


def test_raw_audio_in_keeps_frames_whole_and_a_container_is_checked() -> None:
    raw = AudioIn(4)  # linear16, two channels
    assert raw.push(b"abcdef") == b"abcd"
    assert raw.push(b"gh") == b"efgh"
    container = AudioIn(None)
    assert container.push(b"RI") == b""  # too short to tell
    assert container.push(b"FF....WAVE") == b"RIFF....WAVE"
    with pytest.raises(UnsupportedAudio, match="no container"):
        AudioIn(None).push(b"PK\x03\x04 a zip")


def test_results_tile_each_channel_and_finalize_marks_the_next_final() -> None:
    config = SessionConfig(engine="local", sample_rate=16000, channels=2, multichannel=True)
    session = SimpleNamespace(id="s1", config=config, engine_name="local", created_at=time.time())
    params = parse_params(
        MultiDict(interim_results="true", multichannel="true", channels="2"), "local"
    )
    encoder = Encoder(cast(Session, session), params)

    def final(channel: int, start: float, end: float, text: str) -> str:
        data = {"text": text, "confidence": 0.9, "start": start, "end": end, "words": []}
        data |= {"speech_final": True, "channel": channel}
        event = {"event_type": "final", "seq": 1, "session_id": "s1", "timestamp": 0}
        return json.dumps(event | {"data": data})

    first = json.loads(encoder.encode(final(1, 0.4, 1.2, "right"))[0])
    assert (first["channel_index"], first["start"], first["duration"]) == ([1, 2], 0.0, 1.2)
    encoder.finalize_asked = True
    second = json.loads(encoder.encode(final(1, 1.5, 2.0, "again"))[0])
    assert (second["start"], second["duration"], second["from_finalize"]) == (1.2, 0.8, True)
    other = json.loads(encoder.encode(final(0, 0.1, 0.5, "left"))[0])
    assert (other["channel_index"], other["start"]) == ([0, 2], 0.0)  # its own tiling


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"RIFF\x00\x00\x00\x00WAVE", Container("WAV", "wav")),
        (b"OggS\x00\x02", Container("Ogg", "ogg")),
        (b"\x1a\x45\xdf\xa3\x9f", Container("WebM", "matroska")),
        (b"fLaC\x00\x00", Container("FLAC", "flac")),
        (b"ID3\x04\x00\x00\x00\x00", MP3),
        (b"Ogg", False),  # the start of a magic: send more
        (b"\x01\x00\x02\x00\x03\x00\x04\x00", None),  # raw samples
    ],
)
def test_first_bytes_say_what_the_stream_is(head: bytes, expected: object) -> None:
    assert sniff(head) == expected


def test_first_bytes_of_what_is_no_audio_are_named() -> None:
    found = sniff(b"\x00\x00\x00\x18ftypmp42")
    assert isinstance(found, str)
    assert "MP4" in found
