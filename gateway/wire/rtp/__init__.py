"""RTP shared by the protocols that carry it (``webrtc``, ``udp``), sans I/O: packets and RTCP
(``packet``), payload formats (``h264``, ``aac``, ``opus``), frame assembly in order
(``assembler``) and the session clock from sender reports (``clock``)."""
