"""Plain RTP session descriptions (RFC 4566/8866 without ICE or DTLS), as the FFmpeg CLI writes
them with ``-sdp_file``: where each track goes and how it is coded; and the gateway's answer."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..sdp import MAX_SDP, Codec, SdpError, parse_codecs

__all__ = ["RtpDescription", "RtpMedia", "aac_mode", "answer", "gateway_codec", "parse"]


def aac_mode(codec: Codec, play: bool = False) -> str:
    """``"hbr"`` (RFC 3640 AAC-hbr), ``"latm"`` (RFC 6416, in-band config off) or ``""``. A
    publisher's SDP must carry the ``config``; a player's offer cannot know it yet (``play``)."""
    has_config = play or bool(codec.fmtp.get("config"))
    if codec.name == "mpeg4-generic" and (play or codec.fmtp.get("mode", "").lower() == "aac-hbr"):
        if codec.fmtp.get("sizelength", "13") == "13" and has_config:
            return "hbr"
    if codec.name == "mp4a-latm" and codec.fmtp.get("cpresent", "0" if play else "1") == "0" \
            and has_config:
        return "latm"
    return ""


def gateway_codec(codec: Codec, play: bool = False) -> str | None:
    """The gateway's codec name of a payload type it can take (or, ``play``, send) over plain
    RTP, else None."""
    if codec.name == "h264" and codec.fmtp.get("packetization-mode", "1" if play else "0") in (
            ("1",) if play else ("0", "1")):
        return "h264"
    if codec.name == "opus" and codec.clock_rate == 48000:
        return "opus"
    if aac_mode(codec, play):
        return "aac"
    return None


@dataclass(slots=True)
class RtpMedia:
    """One m-section: its kind, where its RTP (and RTCP) go, its payload types."""

    kind: str
    address: str
    port: int
    rtcp_port: int
    rtcp_mux: bool
    codecs: list[Codec]
    #: the sender takes RTCP feedback (RTP/AVPF, or ``a=rtcp-fb`` with PLI): worth asking it for
    #: a keyframe after a loss (RFC 4585)
    feedback: bool = False

    def usable(self, play: bool = False) -> list[tuple[Codec, str]]:
        """Payload types the gateway takes (or, ``play``, sends), with its codec name, in the
        description's order."""
        out = []
        for c in self.codecs:
            name = gateway_codec(c, play)
            if name is not None:
                out.append((c, name))
        return out


@dataclass(slots=True)
class RtpDescription:
    text: str
    media: list[RtpMedia]

    def kinds(self) -> dict[str, RtpMedia]:
        """The first audio and the first video m-section."""
        out: dict[str, RtpMedia] = {}
        for m in self.media:
            out.setdefault(m.kind, m)
        return out


def _address(line: str) -> str:
    parts = line[2:].split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"malformed c= line {line[:60]!r}")
    address = parts[2].split("/")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SdpError(f"c= address {address!r} is not an IP address") from None
    return address


def parse(text: str) -> RtpDescription:
    """Parse a plain RTP description; ``SdpError`` with the reason for anything unusable."""
    if len(text) > MAX_SDP:
        raise SdpError(f"SDP larger than {MAX_SDP} bytes")
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("not an SDP description (must start with v=0)")
    session_address = ""
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP line {line[:40]!r}")
        if line.startswith("m="):
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
        elif line.startswith("c="):
            session_address = _address(line)
    media: list[RtpMedia] = []
    for mline, attrs in sections:
        parts = mline[2:].split()
        if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
            raise SdpError(f"malformed m= line {mline[:60]!r}")
        kind = parts[0]
        if kind not in ("audio", "video"):
            continue
        if parts[2] not in ("RTP/AVP", "RTP/AVPF"):
            raise SdpError(f"{kind}: transport {parts[2]} is not plain RTP (RTP/AVP, RTP/AVPF)")
        port = int(parts[1].split("/")[0])
        if not 0 <= port <= 65535:
            raise SdpError(f"{kind}: port {port} out of range")
        address = next((_address(a) for a in attrs if a.startswith("c=")), session_address)
        rtcp_mux = "a=rtcp-mux" in attrs
        rtcp_port = port if rtcp_mux else port + 1
        for a in attrs:
            if a.startswith("a=rtcp:"):
                value = a[7:].split()[0] if a[7:].split() else ""
                if not value.isdigit() or not 0 < int(value) <= 65535:
                    raise SdpError(f"{kind}: malformed {a[:40]!r}")
                rtcp_port = int(value)
        feedback = parts[2] == "RTP/AVPF" or any(
            a.startswith("a=rtcp-fb:") and " pli" in a.lower() for a in attrs)
        media.append(RtpMedia(kind, address, port, rtcp_port, rtcp_mux,
                              parse_codecs(parts[3:], attrs), feedback))
    if not media:
        raise SdpError("SDP has neither an audio nor a video m-section")
    return RtpDescription(text, media)


def answer(address: str, session_id: int, tracks: list[tuple[RtpMedia, Codec, int]],
           direction: str) -> str:
    """The gateway's side: for each (m-section, chosen payload type, gateway port), where to
    send or what is sent; ``direction`` is the gateway's (``recvonly`` when it is published to).
    RTCP goes to port + 1 unless the offer muxes it (``a=rtcp-mux``)."""
    family = "IP6" if ":" in address else "IP4"
    out = ["v=0", f"o=- {session_id} 1 IN {family} {address}", "s=mediagateway",
           f"c=IN {family} {address}", "t=0 0"]
    for media, codec, port in tracks:
        out.append(f"m={media.kind} {port} RTP/AVP {codec.pt}")
        channels = f"/{codec.channels}" if codec.channels else ""
        out.append(f"a=rtpmap:{codec.pt} {_encoding(codec)}/{codec.clock_rate}{channels}")
        if codec.fmtp_line:
            out.append(f"a=fmtp:{codec.pt} {codec.fmtp_line}")
        if media.rtcp_mux:
            out.append("a=rtcp-mux")
        out.append(f"a={direction}")
    return "\r\n".join(out) + "\r\n"


def _encoding(codec: Codec) -> str:
    return {"h264": "H264", "mpeg4-generic": "MPEG4-GENERIC", "mp4a-latm": "MP4A-LATM",
            "opus": "opus"}.get(codec.name, codec.name)
