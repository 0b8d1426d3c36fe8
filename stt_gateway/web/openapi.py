"""The OpenAPI 3.1 document, built from the pydantic models the routes validate with.

Schemas come only from the models (``pydantic.json_schema.models_json_schema``); this module
adds the route table (method, path, which model goes in and out) and one example per event
type. The SSE and WebSocket event payloads are the ``Event`` component (a ``oneOf`` over the
event models, discriminated by ``event_type``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..events import (
    ErrorEvent,
    FinalEvent,
    HeartbeatEvent,
    SessionEndEvent,
    SpeechEndEvent,
    SpeechStartEvent,
    SummaryData,
    SummaryEvent,
    SummaryTokenEvent,
    TokenEvent,
)
from ..models import (
    AudioAccepted,
    AudioBody,
    ControlMessage,
    CreateSessionBody,
    ErrorBody,
    SessionClosedBody,
    SessionCreated,
    SessionInfo,
    TokenIssued,
    TokenRequest,
    Transcript,
)

_SID = "5f2b1c0e9a7d4c3b8e6f1a2b3c4d5e6f"
_EVENT_EXAMPLES: dict[type[BaseModel], dict[str, Any]] = {
    TokenEvent: {"text": "go forward ten", "confidence": 0.0, "start": 0.51, "end": 1.6},
    FinalEvent: {
        "text": "go forward ten meters",
        "confidence": 0.71,
        "start": 0.47,
        "end": 2.13,
        "speech_final": True,
        "words": [{"word": "go", "start": 0.47, "end": 0.64, "confidence": 0.99}],
    },
    SpeechStartEvent: {"timestamp": 0.51},
    SpeechEndEvent: {"last_word_end": 2.13},
    HeartbeatEvent: {"status": "alive"},
    ErrorEvent: {
        "code": "odd_byte_count",
        "message": "the audio chunk has 3 bytes, an odd count: PCM16 needs 2 bytes per sample",
    },
    SummaryTokenEvent: {"text": " forward"},
    SummaryEvent: {"text": "The speaker asks to go forward ten meters.", "model": "llama3.2"},
    SessionEndEvent: {"reason": "client_closed", "audio_seconds": 2.786},
}
_EVENTS = list(_EVENT_EXAMPLES)
_MODELS: list[type[BaseModel]] = [
    CreateSessionBody,
    SessionCreated,
    SessionInfo,
    SessionClosedBody,
    Transcript,
    AudioBody,
    AudioAccepted,
    ErrorBody,
    ControlMessage,
    TokenRequest,
    TokenIssued,
    *_EVENTS,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ErrorBody, description)


_SESSION_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_RESUME_ID = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_FORBIDDEN = _error(
    "auth on: the credential does not allow this here (forbidden); open mode: a foreign "
    "Origin (forbidden_origin) or, bound to loopback, a Host that is not a loopback name "
    "(forbidden_host)"
)
_UNAUTHORIZED = _error(
    "auth on: no credential, or one that is malformed, unknown, expired or badly signed"
)
_OPEN_PATHS = ("/health", "/ready", "/info", "/usage", "/openapi.json")
_EVENT_STREAM = {
    "oneOf": [_ref(m) for m in _EVENTS],
    "discriminator": {"propertyName": "event_type"},
}


_LISTEN_PARAMS = [
    ("model", "a Deepgram model name (the engine's own model answers) or the engine's model"),
    ("language", "BCP-47; default en"),
    ("encoding", "linear16, mulaw or alaw (raw); absent: a container (WAV, Ogg, WebM, MP3, FLAC)"),
    ("sample_rate", "Hz of raw audio; required with encoding"),
    ("channels", "channels of raw audio, 1–8, mixed to mono unless multichannel"),
    ("multichannel", "true: each channel its own stream, Results with channel_index [i, N]"),
    ("interim_results", "true / false (default false)"),
    ("endpointing", "ms of silence that ends an utterance, or false"),
    ("utterance_end_ms", "1000–5000: UtteranceEnd messages (with interim_results)"),
    ("vad_events", "true: SpeechStarted messages"),
    ("punctuate", "true: words carry punctuated_word"),
    ("smart_format", "as punctuate here"),
    ("engine", "ours: the engine (default: the gateway's default engine)"),
]


def _deepgram_refusal(description: str) -> dict[str, Any]:
    return {
        "description": description + " (Deepgram's shape; dg-error and dg-request-id headers)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "err_code": {"type": "string"},
                        "err_msg": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                    "required": ["err_code", "err_msg", "request_id"],
                }
            }
        },
    }


def _deepgram_refusals() -> dict[str, Any]:
    return {
        "400": _deepgram_refusal(
            "a parameter Deepgram refuses, one not served here, or a config the engine cannot "
            "serve; a plain GET"
        ),
        "401": _deepgram_refusal("auth on: no credential, or a bad one (INVALID_AUTH)"),
        "403": _deepgram_refusal("the credential may not create sessions; a foreign Origin"),
        "429": _deepgram_refusal("the key's limits"),
        "503": _deepgram_refusal("the gateway's session limit"),
    }


def _paths() -> dict[str, Any]:
    not_found = {"404": _error("no session with this id")}
    return {
        "/tokens": {
            "post": {
                "summary": "Mint a short-lived token (an API key required)",
                "operationId": "createToken",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(TokenRequest)}},
                },
                "responses": {
                    "201": _json(TokenIssued, "the token and what it allows"),
                    "404": _error("auth is off: there is nothing to mint"),
                    "422": _error("a bad scope, session_id or ttl_s"),
                },
            }
        },
        "/sessions": {
            "post": {
                "summary": "Create a session",
                "operationId": "createSession",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref(CreateSessionBody)}},
                },
                "responses": {
                    "201": _json(SessionCreated, "created; the effective config"),
                    "422": _error("invalid config (the message names the field)"),
                    "502": _error("the upstream engine refused (upstream_auth)"),
                    "503": _error("too many sessions, or the upstream is busy"),
                },
            }
        },
        "/sessions/{id}": {
            "parameters": _SESSION_ID,
            "get": {
                "summary": "A session's state",
                "operationId": "getSession",
                "responses": {"200": _json(SessionInfo, "the session"), **not_found},
            },
            "delete": {
                "summary": "Close: flush the engine, last finals, then session_end",
                "operationId": "closeSession",
                "responses": {"200": _json(SessionClosedBody, "closed (idempotent)"), **not_found},
            },
        },
        "/sessions/{id}/transcript": {
            "parameters": _SESSION_ID,
            "get": {
                "summary": "Every final so far",
                "operationId": "getTranscript",
                "responses": {"200": _json(Transcript, "the transcript"), **not_found},
            },
        },
        "/sessions/{id}/summary": {
            "parameters": _SESSION_ID,
            "post": {
                "summary": "A summary of the transcript so far, streamed on the session's "
                "events (summary_token…, summary); the session goes on",
                "operationId": "postSummary",
                "responses": {
                    "200": _json(SummaryData, "the summary event's data, once written"),
                    **not_found,
                    "409": _error("the session is closed"),
                    "422": _error("summary_unavailable: the gateway has no LLM endpoint"),
                    "502": _error("summary_failed: the LLM endpoint failed (also an error event)"),
                },
            },
        },
        "/sessions/{id}/audio": {
            "parameters": _SESSION_ID,
            "post": {
                "summary": "Send the next chunk of audio (PCM16, G.711 or a container's bytes)",
                "operationId": "postAudio",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref(AudioBody)},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "audio/*": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "202": _json(AudioAccepted, "taken"),
                    "400": _error("bad base64, odd byte count, empty chunk, bad body"),
                    **not_found,
                    "409": _error(
                        "the session is closed, or a WebSocket holds its audio "
                        "(producer_conflict: one producer per session)"
                    ),
                    "413": _error("the chunk is larger than max_chunk_bytes"),
                    "415": _error(
                        "not JSON, octet-stream or audio/*; or unsupported_media_type: bytes "
                        "that are no audio decoded here (the message says what they looked like)"
                    ),
                },
            },
        },
        "/sessions/{id}/stream": {
            "parameters": [
                *_SESSION_ID,
                {
                    "name": "last_event_id",
                    "in": "query",
                    "required": False,
                    "schema": _RESUME_ID,
                    "description": "resume after this seq (or the Last-Event-ID header)",
                },
            ],
            "get": {
                "summary": "Events as Server-Sent Events (id: seq, data: event JSON)",
                "operationId": "streamEvents",
                "responses": {
                    "200": {
                        "description": "an event stream; each data line is an Event",
                        "content": {"text/event-stream": {"schema": _EVENT_STREAM}},
                    },
                    "204": {"description": "nothing after Last-Event-ID: it ended"},
                    "400": _error("Last-Event-ID not in 0…2^63−1 (invalid_resume_id)"),
                    **not_found,
                },
            },
        },
        "/sessions/{id}/ws": {
            "parameters": [
                *_SESSION_ID,
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "schema": _RESUME_ID,
                    "description": "replay events after this seq first",
                },
                {
                    "name": "events",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": True},
                    "description": "false: audio in only, no events out (a producer that never "
                    "reads cannot be cut off as a slow consumer); not with since",
                },
            ],
            "get": {
                "summary": "WebSocket: binary audio frames (PCM16, G.711 or one container "
                "stream) and ControlMessage text frames in; "
                "Event JSON text frames out",
                "operationId": "sessionSocket",
                "responses": {
                    "101": {"description": "switching to WebSocket"},
                    "400": _error(
                        "since not in 0…2^63−1 (invalid_resume_id), malformed events, or "
                        "both since and events=false"
                    ),
                    **not_found,
                },
            },
        },
        "/health": {
            "get": {
                "summary": "Liveness",
                "operationId": "health",
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness",
                "operationId": "ready",
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "not ready, and why"},
                },
            }
        },
        "/info": {
            "get": {
                "summary": "Version, engines and limits",
                "operationId": "info",
                "responses": {"200": {"description": "about this gateway"}},
            }
        },
        "/usage": {
            "get": {
                "summary": "A usage guide (Markdown)",
                "operationId": "usage",
                "responses": {"200": {"description": "the guide"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {"200": {"description": "text exposition"}},
            }
        },
        "/v1/listen": {
            "parameters": [
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": description,
                }
                for name, description in _LISTEN_PARAMS
            ],
            "get": {
                "summary": "Deepgram's live WebSocket (docs/protocols/deepgram-live.md): "
                "binary audio and KeepAlive / Finalize / CloseStream in; Results, "
                "SpeechStarted, UtteranceEnd and one Metadata out; every connection a session "
                "(dg-request-id)",
                "operationId": "deepgramListen",
                "responses": {
                    "101": {"description": "switching to WebSocket; dg-request-id = session id"},
                    **_deepgram_refusals(),
                },
            },
            "post": {
                "summary": "Deepgram's pre-recorded transcription: a whole file (WAV, Ogg, WebM, "
                "MP3, FLAC, or raw linear16 / mulaw / alaw with encoding and sample_rate) in "
                "the body",
                "operationId": "deepgramTranscribeFile",
                "requestBody": {
                    "required": True,
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "200": {
                        "description": "Deepgram's pre-recorded JSON: metadata and "
                        "results.channels[0].alternatives[0] (transcript, confidence, words)",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_deepgram_refusals(),
                    "413": _deepgram_refusal("the file is over max_file_bytes"),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    }


def _with_forbidden(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation may answer 403 (open mode's guards and credentials run before any
    route); with auth on, every one outside the open paths needs a credential (401)."""
    for path, item in paths.items():
        for method, operation in item.items():
            if method != "parameters":
                operation["responses"].setdefault("403", _FORBIDDEN)
                if path not in _OPEN_PATHS:
                    operation["responses"].setdefault("401", _UNAUTHORIZED)
                    operation["security"] = [{"bearer": []}, {}]
    return paths


def build_spec() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (a JSON-able dict)."""
    _, defs = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = defs["$defs"]
    for model, data in _EVENT_EXAMPLES.items():
        event_type = model.model_fields["event_type"].default
        example = {
            "event_type": event_type,
            "seq": 12,
            "session_id": _SID,
            "timestamp": 1795555705.103,
            "data": data,
        }
        if event_type == "heartbeat":
            del example["seq"]
        schemas[model.__name__]["examples"] = [example]
    schemas["Event"] = _EVENT_STREAM
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stt-gateway",
            "version": __version__,
            "description": "Real-time speech-to-text: PCM16 in over WebSocket or HTTP, "
            "interim and final transcripts out over SSE and WebSocket.",
        },
        "paths": _with_forbidden(_paths()),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key (id:secret's secret) or a token from POST "
                    "/tokens; also ?access_token= or the WebSocket subprotocol pair "
                    "bearer, <token>. Needed only when the gateway has keys.",
                }
            },
        },
    }
