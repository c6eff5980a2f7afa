"""``h5``: MPEG-TS ingest over HTTP POST/PUT or WebSocket, and jsmpeg playback (MPEG-1 + MP2 in
MPEG-TS over WebSocket)."""
