"""RTP play set-up: the client's SDP says where to send (only loopback or its own host) and what
it takes; the answer, and ``GET`` on the session, is the receiver's SDP (what the gateway sends,
to the client's ports) that ffplay, VLC or GStreamer open as is."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable, Mapping

from ... import planner
from ...codecs import aac as aac_codec
from ...codecs import h264
from ...hub.sessions import Code, Player, Refusal, Sessions
from ...hub.stream import Stream
from ...media import Track
from ...wire.rtp import aac as rtp_aac
from ...wire.rtp.h264 import format_sprop_parameter_sets, profile_level_id
from ...wire.rtp.session import RtpDescription, RtpMedia, aac_mode, gateway_codec
from ...wire.sdp import Codec
from .egress import RtcpIn, RtpOutput, RtpViewer, ViewerTrack
from .ports import PortRange, PortsExhausted, open_endpoint

log = logging.getLogger(__name__)

__all__ = ["RtpPlay"]


def _allowed(address: str, peer_host: str) -> bool:
    """A destination the gateway may send to: loopback, or the requesting peer itself."""
    try:
        return ipaddress.ip_address(address).is_loopback or address == peer_host
    except ValueError:
        return False


class RtpPlay:
    """One RTP viewer: what it takes, where it goes, and its ``Player`` session."""

    def __init__(self, sessions: Sessions, key: str, peer_addr: str,
                 query: Mapping[str, str], mtu: int = 1200) -> None:
        self.sessions = sessions
        self.mtu = mtu
        self.key = key
        self.peer = peer_addr
        self.peer_host = peer_addr.rsplit(":", 1)[0].strip("[]")
        self.query = query
        self.id = secrets.token_urlsafe(12)
        self.player: Player[RtpOutput] | None = None
        self.viewer: RtpViewer | None = None
        self.chosen: dict[str, tuple[RtpMedia, Codec]] = {}
        self.sdp = ""
        self.closed = False
        self.on_close: Callable[[], None] | None = None

    async def start(self, desc: RtpDescription, ports: PortRange) -> str:
        kinds = desc.kinds()
        for m in kinds.values():
            if not _allowed(m.address, self.peer_host):
                raise Refusal(Code.FORBIDDEN, f"{m.kind}: RTP goes only to loopback or to the "
                                              f"requesting host ({self.peer_host}), not to "
                                              f"{m.address}")
        offers = {k: [n for _, n in m.usable(play=True)] for k, m in kinds.items()}

        def target(source: Stream) -> planner.TargetSpec:
            """The client's codecs per kind, the source's first where offered: it passes
            through, nothing is transcoded that need not be."""
            ordered = {}
            for kind in {*offers, *source.tracks}:
                names = offers.get(kind, [])
                have = source.tracks.get(kind)
                if have is not None and have.codec in names:
                    names = [have.codec, *[n for n in names if n != have.codec]]
                ordered[kind] = names
            plan = planner.plan(self.sessions.matrix, source.tracks,
                                planner.TargetSpec("udp", ordered))
            for kind, tp in plan.tracks.items():
                m = kinds.get(kind)
                if m is None or isinstance(tp, planner.Drop):
                    continue
                name = tp.codec if isinstance(tp, planner.PassThrough) else tp.to_codec
                codec = next((c for c, n in m.usable(play=True) if n == name), None)
                if codec is not None:
                    self.chosen[kind] = (m, codec)
            if not self.chosen:
                raise Refusal(Code.UNSUPPORTED, f"no common codec: the stream has "
                                                f"{ {k: t.codec for k, t in source.tracks.items()} }"
                                                f", the offer {offers}")
            return planner.TargetSpec("udp", {k: ([gateway_codec(self.chosen[k][1], play=True) or ""]
                                                  if k in self.chosen else [])
                                              for k in {"video", "audio", *ordered}})

        self.player = await self.sessions.play(
            self.key, target, self.peer, self.query, lambda s: RtpOutput(s, self._aac_mode(), self.mtu),
            # one output per AAC payload format (AAC-hbr, LATM), known once planned
            sink_key=lambda: ("rtp", self._aac_mode()), protocol="udp")
        return await self._attach(ports)

    def _aac_mode(self) -> str:
        audio = self.chosen.get("audio")
        return (aac_mode(audio[1], play=True) or "hbr") if audio is not None else "hbr"

    async def _attach(self, ports: PortRange) -> str:
        """Ports, the shared output of this AAC format, and the receiver SDP."""
        player = self.player
        assert player is not None and player.media is not None and player.sink is not None
        media, output = player.media, player.sink
        tracks: dict[str, ViewerTrack] = {}
        try:
            for kind, (m, codec) in self.chosen.items():
                _, rtp_sock, rtcp_sock = ports.allocate(m.rtcp_mux)
                vt = ViewerTrack(kind, codec.pt, (m.address, m.port), (m.address, m.rtcp_port),
                                 codec.clock_rate, f"udp {self.peer} {self.key} {kind}",
                                 output.keyframe_for)
                tracks[kind] = vt
                await open_endpoint(vt, sock=rtp_sock)
                if rtcp_sock is not None:  # its RTCP in (NACK, PLI); sender reports go from it
                    vt.rtcp = RtcpIn(vt)
                    await open_endpoint(vt.rtcp, sock=rtcp_sock)
        except PortsExhausted as e:
            for t in tracks.values():
                t.close()
            raise Refusal(Code.UNAVAILABLE, str(e), retry_after=5.0) from None
        self.viewer = RtpViewer(tracks, self.close)
        player.counters = self.viewer.stats
        player.kick = self.close
        self.sdp = self.receiver_sdp(media)
        output.add(self.viewer)
        return self.sdp

    def receiver_sdp(self, media: Stream) -> str:
        """What is sent, to the client's own ports: an SDP a player opens as is."""
        host = next(iter(self.chosen.values()))[0].address
        family = "IP6" if ":" in host else "IP4"
        out = ["v=0", f"o=- {abs(hash(self.id)) % (1 << 31)} 1 IN {family} {host}",
               f"s={self.key}", f"c=IN {family} {host}", "t=0 0"]
        order = {"video": 0, "audio": 1}
        for kind, (m, codec) in sorted(self.chosen.items(), key=lambda kv: order.get(kv[0], 2)):
            track = media.tracks.get(kind)
            out.append(f"m={kind} {m.port} RTP/AVP {codec.pt}")
            out += _codec_lines(codec, track, self._planned(media, kind))
            if m.rtcp_mux:
                out.append("a=rtcp-mux")
            out.append("a=sendonly")
        return "\r\n".join(out) + "\r\n"

    def _planned(self, media: Stream, kind: str) -> Mapping[str, object]:
        """The encoder's parameters when ``kind`` is transcoded (its track comes later)."""
        plan = self.player.plan if self.player is not None else None
        tp = plan.tracks.get(kind) if plan is not None else None
        return tp.params if isinstance(tp, planner.Transcode) else {}

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        player = self.player
        if player is not None:
            self.sessions.stop(player)
            if player.sink is not None and self.viewer is not None:
                player.sink.remove(self.viewer)
        if self.viewer is not None:
            for t in self.viewer.tracks.values():
                t.close()
        log.info("udp %s %s: play ended: %s", self.peer, self.key, reason)
        if self.on_close is not None:
            self.on_close()




def _codec_lines(codec: Codec, track: Track | None, planned: Mapping[str, object]) -> list[str]:
    """rtpmap and fmtp of what is sent: the source's parameters, or the encoder's."""
    pt = codec.pt
    name = gateway_codec(codec, play=True)
    if name == "h264":
        fmtp = "packetization-mode=1"
        if track is not None and track.codec == "h264" and track.config:
            try:
                cfg = h264.parse_avc_config(track.config)
                fmtp += (f";profile-level-id={profile_level_id(cfg.sps[0])}"
                         f";sprop-parameter-sets={format_sprop_parameter_sets([*cfg.sps, *cfg.pps])}")
            except (h264.H264Error, IndexError):
                pass
        return [f"a=rtpmap:{pt} H264/90000", f"a=fmtp:{pt} {fmtp}"]
    if name == "opus":
        return [f"a=rtpmap:{pt} opus/48000/2", f"a=fmtp:{pt} minptime=10;useinbandfec=1"]
    # AAC: the source's AudioSpecificConfig, or one for the encoder's rate and channels
    if track is not None and track.codec == "aac" and track.config:
        asc = track.config
    else:
        rate = int(planned.get("sample_rate", 0) or 48000)  # type: ignore[call-overload]
        channels = int(planned.get("channels", 0) or 2)  # type: ignore[call-overload]
        asc = aac_codec.build_asc(2, rate, channels)
    info = aac_codec.parse_asc(asc)
    rate, channels = info.sample_rate, info.channels or 2
    if aac_mode(codec, play=True) == "latm":
        return [f"a=rtpmap:{pt} MP4A-LATM/{rate}/{channels}",
                f"a=fmtp:{pt} profile-level-id=1;cpresent=0;object=2;"
                f"config={rtp_aac.latm_config(asc)}"]
    return [f"a=rtpmap:{pt} MPEG4-GENERIC/{rate}/{channels}",
            f"a=fmtp:{pt} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;"
            f"indexlength=3;indexdeltalength=3;config={rtp_aac.mpeg4_generic_config(asc)}"]
