"""Gateway settings, read from the environment and an optional ``.env`` file.

Every setting is an environment variable ``STT_GATEWAY_<NAME>`` (e.g. ``STT_GATEWAY_PORT=9000``);
``.env`` in the working directory is read too (environment wins). Parsing and validation are
pydantic-settings'.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

from .auth import ApiKey, parse_keys
from .models import EngineName

CommaList = Annotated[list[str], NoDecode]
"""A list setting written as ``a,b,c`` in the environment (not JSON)."""


class Settings(BaseSettings):
    """Process-wide configuration. All durations are seconds unless the name says ``_ms``."""

    model_config = SettingsConfigDict(
        env_prefix="STT_GATEWAY_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    host: str = Field("127.0.0.1", description="interface the server binds to")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one")
    log_level: str = Field("INFO", description="logging level name")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys as id:secret, comma-separated; any key turns auth on (the id "
        "names the key in logs and metrics; the secret is never shown)",
    )
    no_auth: bool = Field(
        False,
        description="serve without keys on a non-loopback address (protected mode refuses "
        "to start otherwise)",
    )
    token_secret: SecretStr | None = Field(
        None,
        description="HS256 secret signing tokens; unset: random per process (tokens die with it)",
    )
    token_max_ttl_s: int = Field(3600, ge=1, description="longest token POST /tokens mints (s)")
    session_token_ttl_s: int = Field(
        3600, ge=1, description="life of the publish/read tokens POST /sessions returns (s)"
    )
    key_max_sessions: int | None = Field(
        None, ge=1, description="live sessions one key may hold at once (unset: no own limit)"
    )
    key_sessions_per_minute: int = Field(
        120, ge=1, description="sessions one key may create per minute"
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="origins (scheme://host[:port], comma-separated) allowed to call the "
        "gateway from a browser besides its own; default none: same-origin only",
    )
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="Host names served besides loopback names while bound to loopback "
        "(e.g. the name a local TLS proxy forwards); others get 403 (DNS rebinding)",
    )

    default_engine: EngineName = Field(
        "local", description="engine of sessions whose config names none"
    )
    fallback_engine: EngineName = Field(
        "whisper",
        description="embedded engine a deepgram session goes on with when the upstream gives "
        "up, where it serves the session's language (else the session ends); none: never",
    )
    max_sessions: int = Field(200, ge=1, description="live (not yet closed) sessions at once")
    max_chunk_bytes: int = Field(
        512 * 1024, ge=2, description="largest audio chunk (one POST or WS frame), bytes"
    )
    engine_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        description="worker processes running CPU-bound engine work (default: one per core)",
    )
    engine_idle_release_s: float = Field(
        30.0,
        ge=0,
        description="seconds an engine worker keeps a decoder or VAD no stream is using "
        "(beyond one warm each) before freeing its memory",
    )

    redis_url: SecretStr | None = Field(
        None,
        description="redis:// URL of the Redis shared by several gateway processes (sessions "
        "and their events readable on every process); unset: one process, all in memory",
    )
    node_url: str | None = Field(
        None,
        description="with redis_url: the base URL other gateway processes reach this one at "
        "to pass it a session's audio; unset: http://127.0.0.1:<its own private port>",
    )
    workers: int = Field(
        1,
        ge=1,
        description="gateway processes sharing the port (SO_REUSEPORT), so one machine uses "
        "all its cores; more than 1 needs redis_url (the processes share sessions there)",
    )
    lease_s: float = Field(
        5.0,
        gt=0,
        description="with redis_url: a process that has not renewed its lease this long is "
        "gone; another ends its sessions (session_end reason node_lost)",
    )

    replay_events: int = Field(
        10_000, ge=1, description="events kept per session for resume (Last-Event-ID / since)"
    )
    replay_bytes: int = Field(
        8 * 1024 * 1024, ge=1, description="bytes of event JSON kept per session for resume"
    )
    subscriber_queue: int = Field(
        1_000, ge=1, description="events buffered per subscriber before it counts as too slow"
    )
    subscriber_max_lag_s: float = Field(
        30.0,
        gt=0,
        description="a subscriber whose oldest undelivered event is older than this "
        "is cut off (slow_consumer)",
    )
    subscriber_send_buffer: int = Field(
        64 * 1024,
        ge=1024,
        description="bytes a subscriber's socket and transport may each "
        "hold unsent before its events queue up",
    )
    subscriber_stall_s: float = Field(
        30.0,
        gt=0,
        description="a subscriber's write (SSE or WebSocket) blocked this long aborts "
        "its connection (a dead or frozen peer)",
    )
    ws_max_bad_frames: int = Field(
        10,
        ge=1,
        description="a WebSocket that sends this many bad frames (or audio while another "
        "socket is the producer) within a minute is closed with 1008",
    )
    listen_inactivity_s: float = Field(
        10.0,
        gt=0,
        description="a /v1/listen socket that sends no frame (audio or KeepAlive) this long "
        "gets Metadata and close 1011 NET-0001, as Deepgram's does",
    )
    max_file_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        description="the largest file POST /v1/listen takes (bytes); larger gets 413",
    )
    heartbeat_s: float = Field(15.0, gt=0, description="SSE heartbeat event interval")
    ws_ping_s: float = Field(
        20.0, gt=0, description="WebSocket ping interval; aiohttp drops a peer whose pong is late"
    )
    sse_retry_ms: int = Field(1000, ge=0, description="SSE `retry:` sent to browsers")
    idle_timeout_s: float = Field(
        300.0,
        gt=0,
        description="a session with no audio and no subscriber this long ends "
        "(session_end reason idle_timeout)",
    )
    retention_s: float = Field(
        300.0, ge=0, description="how long a closed session stays readable before removal"
    )
    close_timeout_s: float = Field(
        10.0,
        gt=0,
        description="on close, the longest an engine may go without progress (a result, or "
        "audio recognised) before its last results are given up and its last interim stands "
        "as the final",
    )
    close_max_wait_s: float = Field(
        120.0,
        gt=0,
        description="on close, the longest wait for an engine's last results even while it "
        "progresses",
    )
    max_audio_lead_s: float = Field(
        10.0,
        gt=0,
        description="audio (s) a session's engine may hold not yet recognised; past it a "
        "WebSocket producer is not read until the engine catches up and POST audio gets 429",
    )
    max_subscribers: int = Field(
        1_000, ge=1, description="subscribers (SSE and WebSocket) per session at once"
    )
    max_session_s: float = Field(
        4 * 3600.0,
        gt=0,
        description="a session ends (session_end reason max_duration) this long after its "
        "creation, after an error max_duration_soon a minute before",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection that has not sent a whole request this long after it "
        "opened, or after its previous request, is closed (slow clients, slowloris)",
    )

    whisper_model: str | None = Field(
        None,
        validation_alias=AliasChoices("WHISPER_MODEL", "STT_GATEWAY_WHISPER_MODEL"),
        description="engine 'whisper': a CTranslate2 Whisper model directory or the name of "
        "a model already in the local Hugging Face cache; default: the packaged tiny.en, "
        "checked against pinned sha256 hashes",
    )
    whisper_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        description="engine 'whisper': worker processes for Whisper passes, apart from the "
        "streaming engine workers (default: one per core)",
    )
    whisper_queue: int = Field(
        8,
        ge=1,
        description="engine 'whisper': ended utterances that may wait for a Whisper worker; "
        "past that an utterance gets the streaming engine's final (saturation)",
    )
    whisper_niceness: int = Field(
        0,
        ge=0,
        le=19,
        description="engine 'whisper': niceness added to the Whisper workers; above 0 they "
        "yield the CPU to the streaming workers (interims), but then any other load on the "
        "box starves them and finals fall back to the streaming engine's",
    )
    whisper_pass_timeout_s: float = Field(
        10.0,
        gt=0,
        description="engine 'whisper': an utterance whose Whisper final is not ready this "
        "long after it ended gets the streaming engine's final instead (a starved or "
        "saturated pool makes finals late, never lost)",
    )
    whisper_early_pass_ms: int = Field(
        200,
        ge=0,
        description="engine 'whisper': after this much silence inside an utterance, start "
        "its Whisper pass on an idle worker; if the utterance then ends without more speech "
        "that pass is its final (ready sooner than a pass started at the endpoint); 0: never",
    )
    whisper_no_speech_prob: float = Field(
        0.6,
        ge=0,
        le=1,
        description="a Whisper segment more likely than this to be no speech is dropped",
    )
    whisper_min_avg_logprob: float = Field(
        -1.0,
        le=0,
        description="a Whisper segment whose mean token log-probability is lower "
        "is dropped (a guess, not a transcription)",
    )
    whisper_max_compression_ratio: float = Field(
        2.4,
        gt=0,
        description="a Whisper segment whose text gzip-compresses better than this is a "
        "repetition loop and is dropped (openai-whisper's compression_ratio_threshold)",
    )
    whisper_blocklist: list[str] = Field(
        default_factory=lambda: [
            "thanks for watching",
            "thank you for watching",
            "please subscribe",
            "subtitles by",
            "시청해주셔서 감사합니다",
            "구독과 좋아요",
        ],
        description="phrases Whisper makes up from noise; a segment containing one is dropped "
        "(compared lower-cased, without punctuation)",
    )

    llm_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#]+",
        description="an OpenAI-compatible chat endpoint's base URL (Ollama "
        "http://localhost:11434/v1, vLLM, llama.cpp's server, OpenAI): enables session "
        "summaries (config summary); /chat/completions is appended",
    )
    llm_model: str | None = Field(
        None, min_length=1, description="the model the LLM endpoint is asked for (required)"
    )
    llm_api_key: SecretStr | None = Field(
        None, description="sent as a bearer token to the LLM endpoint; never logged or shown"
    )
    llm_timeout_s: float = Field(
        60.0,
        gt=0,
        description="longest a summary may take, from the request to its last token; then "
        "error summary_failed and the session ends as usual",
    )
    llm_context_tokens: int = Field(
        4096,
        ge=512,
        description="the model's context (tokens): the transcript in a summary prompt is "
        "trimmed to fit, oldest finals first",
    )
    llm_max_tokens: int = Field(
        400, ge=16, description="most tokens a summary may have (the request's max_tokens)"
    )

    deepgram_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DEEPGRAM_API_KEY", "STT_GATEWAY_DEEPGRAM_API_KEY"),
        description="enables engine 'deepgram'; never logged or shown",
    )
    deepgram_url: str = Field(
        "wss://api.deepgram.com",
        validation_alias=AliasChoices("DEEPGRAM_URL", "STT_GATEWAY_DEEPGRAM_URL"),
        description="Deepgram base URL (self-hosted Deepgram, or a test fake)",
    )
    deepgram_keepalive_s: float = Field(
        4.0,
        gt=0,
        description="send KeepAlive after this long without audio (Deepgram closes "
        "idle sockets after ~10 s)",
    )
    deepgram_connect_timeout_s: float = Field(
        10.0, gt=0, description="time limit (s) to open the upstream socket: TCP, TLS and the 101"
    )
    deepgram_reconnect_attempts: int = Field(
        5, ge=0, description="reconnects tried after an unplanned upstream loss before giving up"
    )
    deepgram_backoff_s: float = Field(
        0.25, gt=0, description="first reconnect delay; doubles per attempt, with jitter"
    )
    deepgram_backoff_max_s: float = Field(4.0, gt=0, description="longest reconnect delay")
    deepgram_replay_s: float = Field(
        30.0,
        gt=0,
        description="audio not yet covered by a final kept for replay after a "
        "reconnect (older audio is dropped and counted as a gap)",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        """``https://app.example, http://localhost:3000`` → normalised origins.

        Raises:
            ValueError: an entry that is not ``scheme://host[:port]``.
        """
        origins = []
        for item in _split(value):
            url = URL(item.rstrip("/"))
            if url.scheme not in ("http", "https") or not url.host or url.raw_path not in ("", "/"):
                raise ValueError(f"{item!r} is not an origin: write scheme://host[:port]")
            origins.append(str(url.origin()))
        return origins

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        """``ci:s3cret,web:…`` → the items, each checked to be ``id:secret``.

        Raises:
            ValueError: an item that is not ``id:secret``, or an id given twice (the message
                names neither secret).
        """
        items = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in _split(value)]
        parse_keys(items)
        return items

    @field_validator("token_secret")
    @classmethod
    def _token_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """At least 32 characters: HS256 wants a key as long as its hash (RFC 7518 §3.2).

        Raises:
            ValueError: shorter.
        """
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "use at least 32 characters (e.g. from python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        return [h.lower() for h in _split(value)]

    @property
    def max_request_bytes(self) -> int:
        """The largest request body (bytes): above the audio chunk limit, so an oversized
        chunk gets our 413 with a message rather than aiohttp's bare one (base64 in JSON is
        4/3 of the bytes, plus room for the JSON around it)."""
        return self.max_chunk_bytes * 4 // 3 + 64 * 1024

    def keys(self) -> list[ApiKey]:
        """The configured API keys (empty: auth off)."""
        return parse_keys([k.get_secret_value() for k in self.api_keys])

    def protected_mode_refusal(self) -> str | None:
        """Why the gateway must not start as configured (``docs/api.md``: no key, a
        non-loopback address, no ``--no-auth``; ``workers`` it cannot run; an LLM endpoint
        without a model), or None."""
        if self.workers > 1 and self.redis_url is None:
            return (
                f"--workers {self.workers} needs STT_GATEWAY_REDIS_URL: a client's requests "
                f"land on any of the processes, which find each other's sessions in Redis"
            )
        if self.workers > 1 and self.port == 0:
            return "--workers needs a fixed --port: the processes share one"
        if self.llm_url is not None and self.llm_model is None:
            return (
                "STT_GATEWAY_LLM_URL needs STT_GATEWAY_LLM_MODEL: the model the endpoint is "
                "asked for (e.g. llama3.2 on Ollama)"
            )
        if self.api_keys or self.no_auth or self.loopback_bound:
            return None
        return (
            f"refusing to serve {self.host} without authentication: anyone who reaches it "
            f"could open sessions and read them. Set STT_GATEWAY_API_KEYS=id:secret (and give "
            f"clients the secret), or pass --no-auth (STT_GATEWAY_NO_AUTH=true) if the "
            f"network in front of it does the checking"
        )

    @property
    def loopback_bound(self) -> bool:
        """Whether the gateway listens on a loopback address only."""
        return is_loopback_name(self.host)


def _split(value: object) -> list[str]:
    """Comma-separated text → list of stripped items; a list of strings stays as it is.

    Raises:
        ValueError: neither.
    """
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ValueError("write a comma-separated list")


def is_loopback_name(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets allowed), without a port."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
