"""The plain-RTP SDP parser takes what the FFmpeg CLI writes, and anything else gets an
``SdpError`` with a reason, never another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire.rtp import session
from gateway.wire.sdp import SdpError

FFMPEG_SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s=No Name
t=0 0
a=tool:libavformat 59.27.100
m=video 31000 RTP/AVP 96
c=IN IP4 127.0.0.1
b=AS:1000
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1
m=audio 31002 RTP/AVP 97
c=IN IP4 127.0.0.1
b=AS:64
a=rtpmap:97 MPEG4-GENERIC/48000/2
a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=119056E500
"""


def test_ffmpeg_sdp() -> None:
    desc = session.parse(FFMPEG_SDP)
    kinds = desc.kinds()
    assert (kinds["video"].port, kinds["video"].rtcp_port, kinds["video"].address) == (
        31000, 31001, "127.0.0.1")
    assert [n for _, n in kinds["video"].usable()] == ["h264"]
    assert [n for _, n in kinds["audio"].usable()] == ["aac"]
    assert session.aac_mode(kinds["audio"].codecs[0]) == "hbr"


def test_a_play_offer_needs_no_aac_config() -> None:
    offer = FFMPEG_SDP.replace("; config=119056E500", "")
    audio = session.parse(offer).kinds()["audio"]
    assert audio.usable() == [] and [n for _, n in audio.usable(play=True)] == ["aac"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_says_why(text: str) -> None:
    try:
        session.parse(text)
    except SdpError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FFMPEG_SDP.splitlines() + [
    "m=video x RTP/AVP 96", "c=IN IP4 nothere", "a=rtcp:0", "a=rtcp:abc", "a=rtcp-mux",
    "m=audio 70000 RTP/AVP 97", "m=video 5 RTP/SAVPF 96", "a=rtpmap:97 opus/48000/2",
    "a=rtpmap:x y", "a=fmtp:96 packetization-mode=1;;=;", "c=IN IP6 ::1"]), max_size=30))
def test_shuffled_sdp_lines_parse_or_say_why(lines: list[str]) -> None:
    try:
        desc = session.parse("v=0\n" + "\n".join(lines))
    except SdpError:
        return
    for m in desc.media:
        assert 0 <= m.port <= 65535 and m.kind in ("audio", "video")
        m.usable()
        m.usable(play=True)
