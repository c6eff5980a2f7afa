"""Sans-I/O codec bitstream helpers shared by every ingest and egress (H.264, AAC, MPEG-1 video,
MPEG audio)."""
