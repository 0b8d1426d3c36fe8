"""Speech engines behind one interface (see :mod:`stt_gateway.engines.base`)."""
