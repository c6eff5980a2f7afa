"""Sans-I/O wire formats shared by several protocols: RTMP (handshake, chunks, AMF0, the
connection state machine, client and server), FLV, MPEG-TS, RTP, SDP. Pure parsers and
serializers: no sockets, no asyncio."""
