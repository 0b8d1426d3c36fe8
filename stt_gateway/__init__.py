"""stt-gateway: a real-time speech-to-text gateway.

PCM16 audio comes in over WebSocket or HTTP; interim and final transcripts go out over
Server-Sent Events and WebSocket to any number of subscribers. The public contract is
``docs/api.md``; :func:`stt_gateway.app.create_app` builds the server.
"""

__version__ = "0.1.0"
