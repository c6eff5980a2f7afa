"""WebRTC: WHIP ingest and WHEP egress on aiortc, media kept encoded end to end.

``seam`` is the only module that touches aiortc internals; ``sdp`` inspects and trims offers
(sans-I/O); ``whip`` is the publishing session, ``whep`` the playing one with the shared output
that converts each frame once for every viewer. HTTP routes live in ``servers.webrtc_http``.
"""
