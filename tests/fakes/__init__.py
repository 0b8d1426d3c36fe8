"""Fakes for tests: a scripted engine and a protocol-faithful Deepgram server."""
