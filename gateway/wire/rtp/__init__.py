"""RTP halves shared by the protocols that carry RTP (``webrtc``, ``udp``), sans I/O."""
