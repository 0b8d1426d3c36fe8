"""HTTP, SSE and WebSocket handlers: thin layers that parse input, call the session core and
write its events out."""
