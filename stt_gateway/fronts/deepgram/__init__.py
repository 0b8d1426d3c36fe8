"""Deepgram, both ways: its wire format (:mod:`.wire`), its live API as an upstream engine
(:mod:`.upstream`), and ``/v1/listen`` served to Deepgram's own clients (:mod:`.listen`, with
the query rules in :mod:`.params` and our events made Deepgram's messages in
:mod:`.results`)."""
