"""``udp``: the native SDK's transport, plain RTP/RTCP over UDP set up with SDP over HTTP.
Publishing works (``routes``: ``POST /{app}/{stream}/rtp/publish``); playing is to come."""
