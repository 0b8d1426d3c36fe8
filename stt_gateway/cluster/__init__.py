"""Sessions shared by several gateway processes on Redis (``STT_GATEWAY_REDIS_URL``).

A session lives in the process that created it, its *owner*: the one whose engine holds its
audio stream. The owner's event log stays where ``seq`` is assigned and where its own
subscribers are served; every record it publishes is also appended, in order, to the
session's Redis stream, and each final to its transcript list (``writer.py``: one script call
per round for every owned session). Any other process serves the session's subscribers from a
*replica* (``replica.py``): an :class:`~stt_gateway.eventlog.EventLog` filled with the stream's
history before its first subscriber joins, then fed by the process's one reader of every stream
it follows (one ``XREAD`` per round for all its sessions, not one per subscriber), so a
subscriber there gets every event in order, once, with resume, exactly as on the owner. Audio
and control for a session go to its owner (the web layer passes them on; see docs/operations.md).
``node.py`` holds the lease, the reaper and the reads of records and transcripts;
``keys.py`` the layout below.

Redis keys (``{id}``: the session id)::

    stt:node:{node}       the process's URL, with a lease (PX lease_s): alive while it renews
    stt:live              SET of live session ids (what a survivor checks for lost owners)
    stt:s:{id}            HASH: owner, owner_url, state, created_at, config, audio_seconds,
                          last_seq, epoch, reason
    stt:s:{id}:events     STREAM: entry id "<seq>-0" (so Last-Event-ID n reads from "n-0"),
                          fields t (event type), j (event JSON); MAXLEN ~ replay_events
    stt:s:{id}:finals     LIST of final events' JSON (the transcript, whole)
    stt:s:{id}:followers  HASH: process → "<subscribers>:<until, Unix ms>", renewed with the
                          lease: the owner counts every process's subscribers (idle timeout,
                          GET's subscribers)
    stt:s:{id}:lost       the claim of the one process that ends a lost owner's session
    stt:wake:{node}       STREAM: wakes the process's blocked XREAD when it follows one more

An ended session's keys expire ``retention_s`` after its ``session_end``.

Failures, and what each costs:

- Redis unreachable or restarted: the owner keeps serving its own subscribers from memory
  and keeps each record until Redis takes it; on reconnect it re-reads what Redis holds and
  writes what is missing from its ring, and rewrites the session record and the whole
  transcript under a new *epoch* when Redis lost them (``epoch`` as in centrifuge's stream
  positions). A replica resumes its ``XREAD`` after the last ``seq`` it has, so no subscriber
  gets an event twice; events Redis lost and the owner no longer holds reach subscribers as a
  ``replay_gap`` error naming them, never as silence.
- An owner gone (killed, or cut off from Redis) stops renewing its lease; once it has lapsed
  at two sweeps in a row (every ``lease_s`` / 4), within about ``lease_s`` and a half, another
  process appends ``session_end`` reason ``node_lost`` to each of its live
  sessions, so no subscriber anywhere waits forever. Their transcripts stay readable.
"""

from .keys import SessionRecord
from .node import Cluster
from .replica import Replica

__all__ = ["Cluster", "Replica", "SessionRecord"]
