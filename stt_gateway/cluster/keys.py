"""The Redis layout of shared sessions (see the package docstring), and reading it back."""

from __future__ import annotations

from ..events import SummaryEvent
from ..models import SessionConfig, SessionState

LIVE = "stt:live"
"""SET of live session ids: what a survivor checks for owners gone."""


def node_key(node: str) -> str:
    """A process's lease (its URL, with a TTL)."""
    return f"stt:node:{node}"


def wake_key(node: str) -> str:
    """A process's wake-up stream: its shared XREAD returns when the streams it follows change."""
    return f"stt:wake:{node}"


def record_key(session_id: str) -> str:
    return f"stt:s:{session_id}"


def events_key(session_id: str) -> str:
    return f"stt:s:{session_id}:events"


def finals_key(session_id: str) -> str:
    return f"stt:s:{session_id}:finals"


def followers_key(session_id: str) -> str:
    return f"stt:s:{session_id}:followers"


def lost_key(session_id: str) -> str:
    """The claim of the one process that ends a lost owner's session."""
    return f"stt:s:{session_id}:lost"


def session_keys(session_id: str) -> list[str]:
    """The record, events and finals keys: what expires with an ended session."""
    return [record_key(session_id), events_key(session_id), finals_key(session_id)]


def entry_id(seq: int | None) -> str:
    """The stream entry id of event ``seq``: ``Last-Event-ID`` n reads from ``n-0``."""
    return f"{seq}-0"


def seq_of(entry: bytes) -> int:
    """The ``seq`` of a stream entry id."""
    return int(entry.split(b"-", 1)[0])


def count_followers(followers: dict[bytes, bytes], now_ms: int, skip: str | None = None) -> int:
    """Subscribers in a ``followers`` hash (process → ``"<count>:<until, Unix ms>"``) whose
    entries are still fresh, leaving out process ``skip``."""
    total = 0
    for node, value in followers.items():
        count, until = value.split(b":")
        if int(until) > now_ms and node.decode() != skip:
            total += int(count)
    return total


class SessionRecord:
    """A session's record as Redis holds it (the ``stt:s:{id}`` hash).

    Attributes:
        owner: id of the owning process; ``owner_url``: where it takes the session's audio.
        state, created_at (Unix s), audio_seconds (s, as of its newest event written),
        last_seq, config; summary: the newest ``summary`` event's data, if any.
    """

    def __init__(self, session_id: str, fields: dict[bytes, bytes]) -> None:
        self.session_id = session_id
        self.owner = fields[b"owner"].decode()
        self.owner_url = fields[b"owner_url"].decode()
        self.state: SessionState = fields[b"state"].decode()  # type: ignore[assignment]
        self.created_at = float(fields[b"created_at"])
        self.audio_seconds = float(fields.get(b"audio_seconds", b"0"))
        self.last_seq = int(fields.get(b"last_seq", b"0"))
        self.config = SessionConfig.model_validate_json(fields[b"config"])
        summary = fields.get(b"summary")
        self.summary = None if summary is None else SummaryEvent.model_validate_json(summary).data
