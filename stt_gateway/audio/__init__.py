"""Audio as clients send it → PCM16 at the session's rate: :mod:`.pcm` (samples, G.711,
resampling), :mod:`.sniff` (what the first bytes are), :mod:`.ffmpeg` (containers through
PyAV) and :mod:`.stream` (one byte stream, the decode stage itself)."""
