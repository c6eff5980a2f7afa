"""SDP offer inspection and trimming for WHIP/WHEP (sans-I/O: text in, text out).

The gateway decides the codec of each m-section itself (the matrix's preference, what the
source already has) and then hands aiortc an offer that lists only that payload type (plus its
RTX), so aiortc's answer can only say what the gateway chose. aiortc matches H.264 only against
its two baseline profiles; for Main/High the chosen payload type is presented to aiortc as
constrained baseline and the answer gets the offer's own ``fmtp`` back (``restore_fmtp``), which
is what RFC 6184 asks of an answer anyway. Every malformed input raises ``SdpError`` (a
``ValueError``) with a reason fit for a 400 response.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..codecs.h264 import profile_name

__all__ = [
    "ACCEPTED_H264_PROFILES",
    "Codec",
    "Media",
    "Offer",
    "SdpError",
    "TrickleFragment",
    "allowed_address",
    "candidate_address",
    "choose_h264",
    "codec_name",
    "filter_candidates",
    "h264_profile",
    "parse",
    "parse_sdpfrag",
    "parse_codecs",
    "payload_types",
    "restore_fmtp",
    "restrict",
]

MAX_SDP = 64 * 1024

#: profile_idc values whose streams the gateway can take and pass on (Baseline, Main, High).
ACCEPTED_H264_PROFILES = frozenset({66, 77, 100})
#: what aiortc 1.x accepts in ``profile-level-id`` (constrained baseline 3.1)
AIORTC_H264_PROFILE = "42e01f"

_GATEWAY_CODECS = {"h264": "h264", "vp8": "vp8", "opus": "opus"}
_RTPMAP = re.compile(r"^(\d+)\s+([A-Za-z0-9_.-]+)/(\d+)(?:/(\d+))?$")


class SdpError(ValueError):
    """The SDP cannot be used; ``str()`` is the reason returned to the client."""


def h264_profile(profile_level_id: str) -> str:
    """Profile name of an SDP ``profile-level-id`` (e.g. ``42e01f`` -> constrained-baseline)."""
    if not re.fullmatch(r"[0-9a-fA-F]{6}", profile_level_id):
        raise SdpError(f"invalid H264 profile-level-id {profile_level_id!r}")
    raw = bytes.fromhex(profile_level_id)
    return profile_name(raw[0], raw[1])


@dataclass(frozen=True, slots=True)
class Codec:
    """One payload type of an m-section."""

    pt: int
    name: str  # lower-case encoding name: h264, vp8, opus, rtx, red, ...
    clock_rate: int
    channels: int = 0
    fmtp: Mapping[str, str] = field(default_factory=dict)
    fmtp_line: str = ""  # the offer's own text after "a=fmtp:<pt> "

    @property
    def apt(self) -> int | None:
        """For RTX: the payload type it retransmits."""
        value = self.fmtp.get("apt")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def profile_idc(self) -> int:
        plid = self.fmtp.get("profile-level-id", "42e01f")
        return int(plid[:2], 16) if re.fullmatch(r"[0-9a-fA-F]{6}", plid) else -1

    @property
    def profile(self) -> str:
        """H.264 profile name (RFC 6184: absent means constrained baseline)."""
        return h264_profile(self.fmtp.get("profile-level-id", "42e01f"))

    @property
    def usable(self) -> bool:
        """Whether the gateway can carry this codec as-is."""
        if self.name == "h264":
            return (self.fmtp.get("packetization-mode", "0") == "1"
                    and self.profile_idc in ACCEPTED_H264_PROFILES)
        if self.name == "opus":
            return self.clock_rate == 48000
        return self.name in _GATEWAY_CODECS


@dataclass(slots=True)
class Media:
    """One m-section: its kind, mid, direction and payload types in the offer's order."""

    index: int
    kind: str
    mid: str
    direction: str
    codecs: list[Codec]

    def usable(self) -> list[Codec]:
        return [c for c in self.codecs if c.usable]

    def offered(self) -> list[str]:
        """Gateway codec names this m-section can carry, deduplicated, in the offer's order."""
        names: list[str] = []
        for c in self.usable():
            name = _GATEWAY_CODECS[c.name]
            if name not in names:
                names.append(name)
        return names

    def rtx_for(self, pt: int) -> list[int]:
        return [c.pt for c in self.codecs if c.name == "rtx" and c.apt == pt]


@dataclass(slots=True)
class Offer:
    text: str
    media: list[Media]

    def kinds(self) -> dict[str, Media]:
        """The first audio and the first video m-section (WHIP/WHEP use one of each)."""
        out: dict[str, Media] = {}
        for m in self.media:
            if m.kind in ("audio", "video") and m.kind not in out:
                out[m.kind] = m
        return out

    def offers(self) -> dict[str, list[str]]:
        """Per kind, the codecs the client offered that the gateway could carry."""
        return {kind: m.offered() for kind, m in self.kinds().items()}


def _lines(text: str) -> list[str]:
    return [line for line in text.replace("\r\n", "\n").split("\n") if line]


def parse(text: str) -> Offer:
    """Parse and sanity-check an SDP offer from a WHIP/WHEP client."""
    if len(text) > MAX_SDP:
        raise SdpError(f"SDP larger than {MAX_SDP} bytes")
    lines = _lines(text)
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("not an SDP description (must start with v=0)")
    session_attrs: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP line {line[:40]!r}")
        if line.startswith("m="):
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
        else:
            session_attrs.append(line)
    if not sections:
        raise SdpError("SDP has no m= section")
    session_fp = any(a.startswith("a=fingerprint:") for a in session_attrs)
    session_ice = any(a.startswith("a=ice-ufrag:") for a in session_attrs)
    media: list[Media] = []
    for index, (mline, attrs) in enumerate(sections):
        parts = mline[2:].split()
        if len(parts) < 4:
            raise SdpError(f"malformed m= line {mline[:60]!r}")
        kind = parts[0]
        if kind not in ("audio", "video"):
            continue
        if not (session_fp or any(a.startswith("a=fingerprint:") for a in attrs)):
            raise SdpError(f"{kind} m-section has no DTLS fingerprint")
        if not (session_ice or any(a.startswith("a=ice-ufrag:") for a in attrs)):
            raise SdpError(f"{kind} m-section has no ICE credentials")
        mid = next((a[6:].strip() for a in attrs if a.startswith("a=mid:")), "")
        if not mid:
            raise SdpError(f"{kind} m-section has no a=mid (BUNDLE is required)")
        direction = next((a[2:] for a in attrs
                          if a in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")),
                         "sendrecv")
        media.append(Media(index, kind, mid, direction, _codecs(parts[3:], attrs)))
    if not media:
        raise SdpError("SDP has neither an audio nor a video m-section")
    return Offer(text, media)


def parse_codecs(formats: Sequence[str], attrs: Sequence[str]) -> list[Codec]:
    """The payload types of one m-section (its format list and attribute lines)."""
    return _codecs(formats, attrs)


def _codecs(formats: Sequence[str], attrs: Sequence[str]) -> list[Codec]:
    rtpmap: dict[int, tuple[str, int, int]] = {}
    fmtp: dict[int, str] = {}
    for a in attrs:
        if a.startswith("a=rtpmap:"):
            m = _RTPMAP.match(a[9:].strip())
            if m is None:
                raise SdpError(f"malformed rtpmap {a[:60]!r}")
            rtpmap[int(m[1])] = (m[2].lower(), int(m[3]), int(m[4] or 0))
        elif a.startswith("a=fmtp:"):
            pt_text, _, rest = a[7:].partition(" ")
            if pt_text.isdigit():
                fmtp[int(pt_text)] = rest.strip()
    out: list[Codec] = []
    for f in formats:
        if not f.isdigit():
            raise SdpError(f"payload type {f!r} is not a number")
        pt = int(f)
        if pt not in rtpmap:
            continue  # static payload types without rtpmap: nothing the gateway uses
        name, clock, channels = rtpmap[pt]
        params = {}
        for item in fmtp.get(pt, "").split(";"):
            key, eq, value = item.strip().partition("=")
            if key:
                params[key.lower()] = value.strip() if eq else ""
        out.append(Codec(pt, name, clock, channels, params, fmtp.get(pt, "")))
    return out


def codec_name(media: Media, pt: int) -> str | None:
    """Gateway codec name of a payload type in ``media`` (None for RTX / unknown)."""
    for c in media.codecs:
        if c.pt == pt:
            return _GATEWAY_CODECS.get(c.name)
    return None


def payload_types(text: str) -> dict[str, dict[int, str]]:
    """Per kind, payload type -> gateway codec name, e.g. of an answer the gateway made."""
    offer = parse(text)
    out: dict[str, dict[int, str]] = {}
    for m in offer.media:
        table = out.setdefault(m.kind, {})
        for c in m.codecs:
            if c.name in _GATEWAY_CODECS:
                table[c.pt] = _GATEWAY_CODECS[c.name]
    return out


def restrict(offer: Offer, chosen: Mapping[str, int]) -> tuple[str, dict[int, str]]:
    """The offer with each m-section reduced to its chosen payload type (by mid) and RTX.

    Returns the text for aiortc and, per chosen H.264 payload type, the offer's original fmtp
    text to put back into aiortc's answer with ``restore_fmtp``.
    """
    by_index = {m.index: m for m in offer.media}
    out: list[str] = []
    original: dict[int, str] = {}
    keep: set[str] = set()
    index = -1
    rewrite: dict[int, str] = {}
    for line in _lines(offer.text):
        if line.startswith("m="):
            index += 1
            m = by_index.get(index)
            keep = set()
            if m is not None and m.mid in chosen:
                pt = chosen[m.mid]
                codec = next((c for c in m.codecs if c.pt == pt), None)
                if codec is None:
                    raise SdpError(f"payload type {pt} is not in m-section {m.mid}")
                pts = [pt, *m.rtx_for(pt)]
                keep = {str(p) for p in pts}
                parts = line.split()
                line = " ".join(parts[:3] + [str(p) for p in pts])
                if codec.name == "h264":
                    original[pt] = codec.fmtp_line
                    params = dict(codec.fmtp)
                    params["profile-level-id"] = AIORTC_H264_PROFILE
                    rewrite[pt] = ";".join(f"{k}={v}" if v else k for k, v in params.items())
            out.append(line)
            continue
        if keep:
            for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
                if line.startswith(prefix):
                    pt_text = line[len(prefix):].split(" ", 1)[0]
                    if pt_text != "*" and pt_text not in keep:
                        line = ""
                    elif prefix == "a=fmtp:" and pt_text.isdigit() and int(pt_text) in rewrite:
                        line = f"a=fmtp:{pt_text} {rewrite[int(pt_text)]}"
                    break
        if line:
            out.append(line)
    return "\r\n".join(out) + "\r\n", original


def restore_fmtp(answer: str, original: Mapping[int, str]) -> str:
    """Put the offer's own fmtp parameters back on the payload types in ``original``."""
    if not original:
        return answer
    out: list[str] = []
    for line in _lines(answer):
        if line.startswith("a=fmtp:"):
            pt_text = line[7:].split(" ", 1)[0]
            if pt_text.isdigit() and int(pt_text) in original:
                line = f"a=fmtp:{pt_text} {original[int(pt_text)]}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def candidate_address(line: str) -> str:
    """Connection address of an ``a=candidate:`` / ``candidate:`` line ('' if malformed)."""
    parts = line.split()
    return parts[4] if len(parts) >= 8 else ""


def allowed_address(address: str, loopback_only: bool) -> bool:
    """Whether a remote candidate may be used: never mDNS (``.local``, it would need multicast),
    and only loopback when the gateway itself only listens there."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # hostnames, mDNS names: nothing to resolve on the gateway
    return ip.is_loopback or not loopback_only


def filter_candidates(text: str, keep: Callable[[str], bool]) -> str:
    """Drop ``a=candidate`` lines whose address ``keep`` refuses."""
    out = [line for line in _lines(text)
           if not line.startswith("a=candidate:") or keep(candidate_address(line))]
    return "\r\n".join(out) + "\r\n"


@dataclass(slots=True)
class TrickleFragment:
    """An ``application/trickle-ice-sdpfrag`` body (RFC 8840)."""

    ufrag: str
    pwd: str
    candidates: list[tuple[str, str]]  # (mid, "candidate:..." without "a=")
    end_of_candidates: bool


def parse_sdpfrag(text: str) -> TrickleFragment:
    if len(text) > MAX_SDP:
        raise SdpError(f"SDP fragment larger than {MAX_SDP} bytes")
    ufrag = pwd = ""
    mid = ""
    cands: list[tuple[str, str]] = []
    end = False
    for line in _lines(text):
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP fragment line {line[:40]!r}")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[12:].strip()
        elif line.startswith("a=ice-pwd:"):
            pwd = line[10:].strip()
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=candidate:"):
            if not candidate_address(line):
                raise SdpError(f"malformed candidate {line[:60]!r}")
            cands.append((mid, line[2:]))
        elif line.startswith("a=end-of-candidates"):
            end = True
    return TrickleFragment(ufrag, pwd, cands, end)


def choose_h264(codecs: Iterable[Codec], profile: str = "") -> Codec | None:
    """The usable H.264 payload type for a source of ``profile`` (best match first)."""
    h264 = [c for c in codecs if c.name == "h264" and c.usable]
    if not h264:
        return None
    if profile:
        exact = [c for c in h264 if c.profile == profile]
        if exact:
            return exact[0]
        family = profile.split("-")[-1]  # constrained-baseline -> baseline
        same = [c for c in h264 if c.profile.split("-")[-1] == family]
        if same:
            return same[0]
        rank = {"baseline": 0, "main": 1, "high": 2}.get(family, 2)
        covering = [c for c in h264 if {66: 0, 77: 1, 100: 2}.get(c.profile_idc, -1) >= rank]
        if covering:
            return covering[0]
    return h264[0]
