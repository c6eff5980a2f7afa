"""``udp`` publish: the FFmpeg CLI sends RTP (one ``-f rtp`` output per track, its
``-sdp_file`` POSTed first) and RTMP / HTTP-FLV viewers get the stream."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.config import Config
from gateway.wire.rtp import session as rtp_sdp

from conftest import FFMPEG, RunningGateway, _start_gateway
from flvcheck import capture, probe

AUDIO = {"aac": ["-c:a", "aac", "-b:a", "64k"], "latm": ["-c:a", "aac", "-b:a", "64k"],
         "opus": ["-c:a", "libopus", "-b:a", "64k"]}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ffmpeg_rtp(video_port: int, audio_port: int, audio: str, seconds: float,
                sdp: Path | None = None) -> list[str]:
    latm = ["-rtpflags", "latm"] if audio == "latm" else []
    return [FFMPEG, "-hide_banner", "-v", "error", "-re",
            "-t", str(seconds), "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
            "-t", str(seconds), "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-map", "0:v", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-g", "25", "-bf", "0", "-f", "rtp", f"rtp://127.0.0.1:{video_port}",
            "-map", "1:a", *AUDIO[audio], *latm, "-f", "rtp", f"rtp://127.0.0.1:{audio_port}",
            *(["-sdp_file", str(sdp)] if sdp else [])]


def _sdp_of(audio: str, tmp_path: Path) -> str:
    """What the FFmpeg CLI will send, as it describes it (sent nowhere that listens)."""
    sdp = tmp_path / f"{audio}.sdp"
    subprocess.run(_ffmpeg_rtp(_free_udp_port(), _free_udp_port(), audio, 0.2, sdp),
                   check=True, timeout=60, capture_output=True)
    return sdp.read_text()


def _h264_nals(tmp_path: Path) -> dict[int, list[bytes]]:
    """NAL units of three 64x64 pictures from libx264 (SPS, PPS, IDR, slices), by type."""
    from gateway.codecs import h264 as h264_codec

    raw = tmp_path / "x.h264"
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x64:rate=10", "-frames:v", "3", "-c:v", "libx264", "-bf",
                    "0", "-f", "h264", str(raw)], check=True, timeout=30)
    by_type: dict[int, list[bytes]] = {}
    for n in h264_codec.split_annexb(raw.read_bytes()):
        by_type.setdefault(h264_codec.nal_type(n), []).append(n)
    return by_type


async def _post(url: str, body: str, ctype: str = "application/sdp") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers={"Content-Type": ctype}) as r:
            return r.status, await r.text(), r.headers.get("Location", "")


@pytest.fixture
def gateway() -> object:
    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0, rtp_port_min=31000,
                    rtp_port_max=31999)
    yield from _start_gateway(config)


@pytest.mark.parametrize("audio", ["aac", "latm", "opus"])
def test_ffmpeg_rtp_publisher_is_played_over_rtmp_and_flv(gateway: RunningGateway, audio: str,
                                                         tmp_path: Path) -> None:
    key = f"live/rtp{audio}"
    status, answer, location = asyncio.run(
        _post(gateway.http_url(f"{key}/rtp/publish"), _sdp_of(audio, tmp_path)))
    assert status == 201, answer
    assert location.endswith(f"/{key}/rtp/publish/" + location.rsplit("/", 1)[1])
    desc = rtp_sdp.parse(answer)
    ports = {m.kind: m.port for m in desc.media}
    assert set(ports) == {"video", "audio"} and all(31000 <= p <= 31999 for p in ports.values())
    assert all(m.address == "127.0.0.1" for m in desc.media)
    pub = subprocess.Popen(_ffmpeg_rtp(ports["video"], ports["audio"], audio, 12),
                           stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        gateway.wait_stream(key)
        flv = tmp_path / "out.flv"
        r = capture(gateway.http_url(f"{key}.flv"), flv, 3.0)
        assert r.returncode == 0, r.stderr
        got = probe(flv)
        assert got.codecs == {"video": "h264", "audio": "aac"}, got.codecs
        assert not got.decode_errors, got.decode_errors
        span = got.video_dts[-1] - got.video_dts[0]
        assert 2.0 <= span <= 4.0 and len(got.video_dts) >= 50, (span, len(got.video_dts))
        rtmp = tmp_path / "rtmp.flv"
        r = capture(gateway.rtmp_url(key), rtmp, 2.0)
        assert r.returncode == 0 and probe(rtmp).codecs == {"video": "h264", "audio": "aac"}
        stream = gateway.gw.hub.streams[key]
        assert stream.info.protocol == "udp"
        assert stream.tracks["audio"].codec == ("opus" if audio == "opus" else "aac")
        sessions = [s for s in gateway.call(gateway.gw.ctx.sessions.stats)
                    if s["role"] == "publish"]
        assert sessions[0]["protocol"] == "udp" and sessions[0]["packets"] > 100, sessions
    finally:
        pub.terminate()
        pub.wait(10)
    # DELETE ends the session and frees the key
    async def delete() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(gateway.http_url(location.lstrip("/"))) as r:
                return r.status

    assert asyncio.run(delete()) == 200
    deadline = time.monotonic() + 5
    while key in gateway.gw.hub.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert key not in gateway.gw.hub.streams


def test_rtp_from_another_host_is_dropped_and_counted(gateway: RunningGateway,
                                                      tmp_path: Path) -> None:
    status, answer, _ = asyncio.run(
        _post(gateway.http_url("live/foreign/rtp/publish"), _sdp_of("opus", tmp_path)))
    assert status == 201, answer
    port = next(m.port for m in rtp_sdp.parse(answer).media if m.kind == "audio")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))  # another loopback host
        for seq in range(20):
            s.sendto(bytes([0x80, 97]) + seq.to_bytes(2, "big") + bytes(8) + b"\xfc\x00",
                     ("127.0.0.1", port))
    # garbage from the publisher's own host: dropped and counted, the session goes on
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own:
        own.bind(("127.0.0.1", 0))
        for junk in (b"", b"\x00", b"\x80", bytes(range(40)), b"\xff" * 1500, b"\x81\xc9"):
            own.sendto(junk, ("127.0.0.1", port))
    time.sleep(0.3)
    pub = next(s for s in gateway.call(gateway.gw.ctx.sessions.stats) if s["key"] == "live/foreign")
    assert pub["foreign"] == 20 and pub["packets"] == 0, pub
    assert pub["malformed"] >= 4, pub
    assert "live/foreign" in gateway.gw.hub.streams


def test_rtp_setup_errors_say_why(gateway: RunningGateway, tmp_path: Path) -> None:
    url = gateway.http_url("live/bad/rtp/publish")
    vp8_only = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                "m=video 5004 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n")

    async def run() -> list[tuple[int, str]]:
        out = []
        for body, ctype in ((vp8_only, "application/sdp"), ("hello", "application/sdp"),
                            (vp8_only, "text/plain")):
            status, text, _ = await _post(url, body, ctype)
            out.append((status, text))
        return out

    (s1, t1), (s2, t2), (s3, t3) = asyncio.run(run())
    assert s1 == 422 and "no codec the gateway takes over RTP" in t1, t1
    assert s2 == 400 and "bad SDP" in t2, t2
    assert s3 == 415, t3
    assert "live/bad" not in gateway.gw.hub.streams


def test_rtp_ports_run_out_with_a_503(tmp_path: Path) -> None:
    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0, rtp_port_min=32000,
                    rtp_port_max=32003)  # two port pairs: one session of two tracks
    sdp = _sdp_of("opus", tmp_path)
    for gateway in _start_gateway(config):
        first = asyncio.run(_post(gateway.http_url("live/one/rtp/publish"), sdp))
        second = asyncio.run(_post(gateway.http_url("live/two/rtp/publish"), sdp))
        assert first[0] == 201, first
        assert second[0] == 503 and "no free UDP port" in second[1], second
        assert "live/two" not in gateway.gw.hub.streams  # the refused publisher left no stream


def _free_even_port_pair() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1]) & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free even UDP port pair")


def _play_offer(video_port: int, audio_port: int, audio: list[str]) -> str:
    """What a receiver offers: where to send, which codecs it takes (no AAC config yet)."""
    formats = {"aac": ("97", "a=rtpmap:97 MPEG4-GENERIC/48000/2\r\na=fmtp:97 streamtype=5;"
                              "profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
                              "indexdeltalength=3\r\n"),
               "opus": ("98", "a=rtpmap:98 opus/48000/2\r\n")}
    pts = " ".join(formats[a][0] for a in audio)
    return ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=video {video_port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            "a=fmtp:96 packetization-mode=1\r\n"
            f"m=audio {audio_port} RTP/AVP {pts}\r\n" + "".join(formats[a][1] for a in audio))


@pytest.mark.parametrize("offer", [["aac", "opus"], ["opus"]])
def test_rtmp_publisher_is_played_over_rtp_by_the_ffmpeg_cli(
        gateway: RunningGateway, clips: dict[str, Path], tmp_path: Path, offer: list[str]) -> None:
    """A client offering AAC (and Opus) gets the RTMP source's AAC as it is, no transcode; a
    client offering only Opus gets Opus. The receiver SDP from GET opens in the FFmpeg CLI."""
    from conftest import Publisher

    pub = Publisher(clips["plain"], gateway.rtmp_url("live/rtpplay"))
    try:
        gateway.wait_stream("live/rtpplay")
        vport, aport = _free_even_port_pair(), _free_even_port_pair()
        status, answer, location = asyncio.run(_post(
            gateway.http_url("live/rtpplay/rtp/play"), _play_offer(vport, aport, offer)))
        assert status == 201, answer

        async def get() -> str:
            async with aiohttp.ClientSession() as http:
                async with http.get(gateway.http_url(location.lstrip("/"))) as r:
                    assert r.status == 200
                    return await r.text()

        receiver = asyncio.run(get())
        assert receiver == answer
        sdp = tmp_path / "play.sdp"
        sdp.write_text(receiver)
        out = tmp_path / "got.mkv"
        r = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-protocol_whitelist",
                            "file,udp,rtp", "-i", str(sdp), "-t", "3", "-c", "copy", "-y",
                            str(out)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        got = probe(out)
        want = "aac" if offer[0] == "aac" else "opus"
        assert got.codecs == {"video": "h264", "audio": want}, got.codecs
        assert len(got.video_dts) >= 40, len(got.video_dts)
        load = gateway.gw.ctx.transcoder.load()
        if want == "aac":
            assert load["used"] == 0, load  # the source's AAC as it is
        else:
            assert load["used"] > 0, load  # one shared AAC -> Opus variant
        viewers = [s for s in gateway.call(gateway.gw.ctx.sessions.stats) if s["role"] == "play"]
        assert viewers and viewers[0]["protocol"] == "udp" and viewers[0]["packets"] > 100
    finally:
        pub.stop()


def test_rtp_play_to_a_third_host_is_refused(gateway: RunningGateway, clips: dict[str, Path]) -> None:
    offer = _play_offer(40000, 40002, ["aac"]).replace("IN IP4 127.0.0.1", "IN IP4 192.0.2.7")
    status, text, _ = asyncio.run(_post(gateway.http_url("live/any/rtp/play"), offer))
    assert status == 403 and "only to loopback or to the requesting host" in text, text


def test_static_mpegts_over_udp_input(clips: dict[str, Path], tmp_path: Path) -> None:
    """``mpegts_inputs``: what hardware encoders send (``-f mpegts udp://HOST:PORT``); the
    stream starts with the first datagram."""
    port = _free_even_port_pair()
    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                    mpegts_inputs=[{"port": port, "key": "live/tsudp"}])
    for gateway in _start_gateway(config):
        pub = subprocess.Popen([FFMPEG, "-hide_banner", "-v", "error", "-re", "-stream_loop",
                                "-1", "-i", str(clips["plain"]), "-c", "copy", "-f", "mpegts",
                                f"udp://127.0.0.1:{port}?pkt_size=1316"],
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            gateway.wait_stream("live/tsudp")
            out = tmp_path / "ts.flv"
            r = capture(gateway.http_url("live/tsudp.flv"), out, 2.0)
            assert r.returncode == 0, r.stderr
            assert probe(out).codecs == {"video": "h264", "audio": "aac"}
            assert gateway.gw.hub.streams["live/tsudp"].info.protocol == "udp"
        finally:
            pub.terminate()
            pub.wait(10)


def test_static_rtp_input_from_an_inline_sdp(tmp_path: Path) -> None:
    """``rtp_inputs``: a device that sends RTP without HTTP set-up, described by an SDP whose
    ports are the gateway's."""
    vport, aport = _free_even_port_pair(), _free_even_port_pair()
    sdp = _sdp_of("aac", tmp_path)
    lines = []
    for line in sdp.splitlines():
        if line.startswith("m=video"):
            line = f"m=video {vport} " + line.split(" ", 2)[2]
        elif line.startswith("m=audio"):
            line = f"m=audio {aport} " + line.split(" ", 2)[2]
        lines.append(line)
    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                    rtp_inputs=[{"port": vport, "key": "live/static", "sdp": "\n".join(lines)}])
    for gateway in _start_gateway(config):
        pub = subprocess.Popen(_ffmpeg_rtp(vport, aport, "aac", 10), stdin=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        try:
            gateway.wait_stream("live/static")
            out = tmp_path / "static.flv"
            r = capture(gateway.http_url("live/static.flv"), out, 2.0)
            assert r.returncode == 0, r.stderr
            assert probe(out).codecs == {"video": "h264", "audio": "aac"}
        finally:
            pub.terminate()
            pub.wait(10)


def test_a_bad_static_input_is_a_config_error() -> None:
    from gateway import app as app_mod
    from gateway.config import ConfigError

    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                    rtp_inputs=[{"port": 5004, "key": "live/x", "sdp": "v=0\nm=video 5004 RTP/AVP 96\n"
                                 "a=rtpmap:96 VP8/90000\n"}])
    with pytest.raises(ConfigError, match=r"rtp_inputs\[0\].sdp: no codec the gateway takes"):
        asyncio.run(app_mod.start(config))


class _LossyRelay:
    """A test-side UDP relay (publisher -> gateway) that drops and reorders RTP packets; RTCP
    (port + 1) passes both ways, and what the gateway sends back (PLIs) is counted."""

    def __init__(self, targets: list[int], drop: float, reorder: float, seed: int = 7) -> None:
        import random
        import threading

        self.rng = random.Random(seed)
        self.drop, self.reorder = drop, reorder
        self.socks: dict[socket.socket, int] = {}
        self.ports: dict[int, int] = {}  # gateway RTP port -> relay RTP port (RTCP: both + 1)
        for target in targets:
            port = _free_even_port_pair()
            for offset in (0, 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", port + offset))
                s.settimeout(0.05)
                self.socks[s] = target + offset
            self.ports[target] = port
        self.dropped = self.reordered = self.sent = self.feedback = 0
        self._publisher: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(s, t), daemon=True)
                         for s, t in self.socks.items()]
        for t in self._threads:
            t.start()

    def _run(self, sock: socket.socket, target: int) -> None:
        held: bytes | None = None
        while not self._stop.is_set():
            try:
                data, addr = sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[1] == target:  # from the gateway (a PLI): counted, not passed on
                self.feedback += 1
                continue
            if len(data) > 1 and not 192 <= data[1] <= 223:  # RTP (RTCP passes as it is)
                if self.rng.random() < self.drop:
                    self.dropped += 1
                    continue
                if held is None and self.rng.random() < self.reorder:
                    held = data  # sent after the next packet
                    self.reordered += 1
                    continue
            sock.sendto(data, ("127.0.0.1", target))
            self.sent += 1
            if held is not None:
                sock.sendto(held, ("127.0.0.1", target))
                held = None

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in self.socks:
            s.close()


def test_rtp_publish_survives_loss_and_reordering(gateway: RunningGateway, tmp_path: Path) -> None:
    """2% of the RTP packets lost and 5% reordered for 20 s on the way from the FFmpeg CLI: the
    stream stays up, what reaches viewers decodes without an error (a picture after a loss
    waits for the next keyframe), the reordered packets were put back in order, and the
    publisher, whose SDP takes feedback, was sent PLIs."""
    sdp = _sdp_of("aac", tmp_path).replace("a=rtpmap:96 H264/90000",
                                          "a=rtpmap:96 H264/90000\na=rtcp-fb:96 nack pli")
    status, answer, _ = asyncio.run(_post(gateway.http_url("live/lossy/rtp/publish"), sdp))
    assert status == 201, answer
    ports = {m.kind: m.port for m in rtp_sdp.parse(answer).media}
    relay = _LossyRelay([ports["video"], ports["audio"]], drop=0.02, reorder=0.05)
    pub = subprocess.Popen(_ffmpeg_rtp(relay.ports[ports["video"]], relay.ports[ports["audio"]],
                                       "aac", 20), stdin=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        gateway.wait_stream("live/lossy")
        out = tmp_path / "lossy.flv"
        r = capture(gateway.http_url("live/lossy.flv"), out, 8.0)
        assert r.returncode == 0, r.stderr
        got = probe(out)
        assert got.codecs == {"video": "h264", "audio": "aac"}
        assert not got.decode_errors, got.decode_errors
        assert len(got.video_dts) >= 25, len(got.video_dts)  # pictures between the losses
        assert relay.dropped > 0 and relay.reordered > 0, (relay.dropped, relay.reordered)
        assert pub.wait(30) == 0  # the publisher ran its 20 s; the stream never went away
        session = next(s for s in gateway.call(gateway.gw.ctx.sessions.stats)
                       if s["key"] == "live/lossy")
        assert session["plis"] > 0 and relay.feedback > 0, (session, relay.feedback)
    finally:
        if pub.poll() is None:
            pub.terminate()
            pub.wait(10)
        relay.close()


def test_a_lost_video_packet_asks_the_publisher_for_a_keyframe(gateway: RunningGateway,
                                                               tmp_path: Path) -> None:
    """A publisher whose SDP takes feedback (``a=rtcp-fb ... pli``) gets an RTCP PLI at its
    RTCP address when a video packet is lost (RFC 4585)."""
    from gateway.wire.rtp.packet import Pli, RtpPacket, SenderReport, compound, parse_rtcp

    by_type = _h264_nals(tmp_path)
    sdp = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=video 5004 RTP/AVPF 96\r\na=rtpmap:96 H264/90000\r\n"
           "a=fmtp:96 packetization-mode=1\r\na=rtcp-fb:96 nack pli\r\n")
    status, answer, _ = asyncio.run(_post(gateway.http_url("live/pli/rtp/publish"), sdp))
    assert status == 201, answer
    port = rtp_sdp.parse(answer).media[0].port
    ssrc = 0x1234
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp:
        rtp.bind(("127.0.0.1", 0))
        rtcp.bind(("127.0.0.1", 0))
        rtcp.settimeout(3)
        rtcp.sendto(compound(SenderReport(ssrc, 1 << 32, 0)), ("127.0.0.1", port + 1))
        units = [(1, by_type[7][0], False, 0), (2, by_type[8][0], False, 0),
                 (3, by_type[5][0], True, 0), (5, by_type[1][0], True, 9000)]  # 4 is lost
        for seq, nal, marker, ts in units:
            rtp.sendto(RtpPacket(96, seq, ts, ssrc, nal, marker).serialize(),
                       ("127.0.0.1", port))
        got = parse_rtcp(rtcp.recv(2048))
    assert [type(p) for p in got] == [Pli] and got[0].media_ssrc == ssrc, got
    pub = next(s for s in gateway.call(gateway.gw.ctx.sessions.stats) if s["key"] == "live/pli")
    assert pub["plis"] == 1, pub


@pytest.mark.parametrize("audio", ["opus", "aac"])
def test_rtp_publisher_is_watched_with_whep_and_jsmpeg(gateway: RunningGateway, audio: str,
                                                       tmp_path: Path) -> None:
    """H.264 + Opus (or AAC) over RTP: a WHEP viewer (aiortc, decoding) gets the H.264 as it
    is and Opus (as it is, or from the AAC), a jsmpeg viewer its MPEG-1 + MP2 variant."""
    import av
    from test_whip_whep import first_frames

    from gateway.testing import WhepClient

    from flvcheck import ws_collect

    status, answer, _ = asyncio.run(
        _post(gateway.http_url("live/rtpweb/rtp/publish"), _sdp_of(audio, tmp_path)))
    assert status == 201, answer
    ports = {m.kind: m.port for m in rtp_sdp.parse(answer).media}
    pub = subprocess.Popen(_ffmpeg_rtp(ports["video"], ports["audio"], audio, 15),
                           stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        gateway.wait_stream("live/rtpweb")

        async def whep() -> dict[str, list]:
            client = WhepClient(gateway.http_url("live/rtpweb/whep"))
            try:
                await client.start()
                assert "H264" in client.answer and "opus" in client.answer, client.answer
                return await first_frames(client, n=10, timeout=15)
            finally:
                await client.close()

        frames = asyncio.run(whep())
        assert len(frames["video"]) == 10 and len(frames["audio"]) == 10
        data = asyncio.run(ws_collect(gateway.ws_url("live/rtpweb.jsmpeg"), 3.0))
        import io

        with av.open(io.BytesIO(data), format="mpegts") as c:
            codecs = {s.type: s.codec_context.name for s in c.streams}
            pictures = sum(1 for _ in c.decode(video=0))
        assert codecs == {"video": "mpeg1video", "audio": "mp2"}, codecs
        assert pictures >= 25, pictures
    finally:
        pub.terminate()
        pub.wait(10)


def test_the_gateway_answers_a_viewers_nack(gateway: RunningGateway,
                                            clips: dict[str, Path]) -> None:
    """An RTP viewer that misses packets asks for them with an RTCP NACK (RFC 4585) and gets
    them again from the gateway's short history."""
    from gateway.wire.rtp.packet import Nack, compound, parse_rtp

    from conftest import Publisher

    pub = Publisher(clips["plain"], gateway.rtmp_url("live/nack"))
    try:
        gateway.wait_stream("live/nack")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as video, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as audio:
            video.bind(("127.0.0.1", 0))
            audio.bind(("127.0.0.1", 0))
            video.settimeout(2)
            offer = _play_offer(video.getsockname()[1], audio.getsockname()[1], ["aac"])
            status, answer, _ = asyncio.run(_post(gateway.http_url("live/nack/rtp/play"), offer))
            assert status == 201, answer
            seen: dict[int, int] = {}
            asked: list[int] = []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                data, source = video.recvfrom(65536)
                p = parse_rtp(data)
                seen[p.sequence_number] = seen.get(p.sequence_number, 0) + 1
                if len(seen) % 50 == 0 and seen[p.sequence_number] == 1:
                    # "lose" this one: ask for it again
                    asked.append(p.sequence_number)
                    video.sendto(compound(Nack(0x42, p.ssrc, [p.sequence_number])), source)
        assert asked, "no packet to ask for"
        again = [s for s in asked if seen.get(s, 0) >= 2]
        assert again == asked, (asked, {s: seen.get(s) for s in asked})
        viewer = next(s for s in gateway.call(gateway.gw.ctx.sessions.stats)
                      if s["role"] == "play" and s["key"] == "live/nack")
        assert viewer["resent"] >= len(asked) and viewer["nacks"] >= len(asked), viewer
    finally:
        pub.stop()


def test_a_viewers_pli_is_answered_from_the_gop_cache(gateway: RunningGateway,
                                                      clips: dict[str, Path]) -> None:
    """An RTMP publisher cannot make a keyframe on request: a viewer's PLI is answered with the
    cached GOP (its keyframe first, SPS/PPS in a STAP-A) at once, not at the next keyframe."""
    from gateway.wire.rtp.packet import Pli, compound, parse_rtp

    from conftest import Publisher

    def stap_a(payload: bytes) -> bool:
        return bool(payload) and payload[0] & 0x1F == 24

    pub = Publisher(clips["plain"], gateway.rtmp_url("live/pligop"))  # a keyframe each second
    try:
        gateway.wait_stream("live/pligop")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as video, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as audio:
            video.bind(("127.0.0.1", 0))
            audio.bind(("127.0.0.1", 0))
            video.settimeout(2)
            offer = _play_offer(video.getsockname()[1], audio.getsockname()[1], ["aac"])
            status, answer, _ = asyncio.run(_post(gateway.http_url("live/pligop/rtp/play"), offer))
            assert status == 201, answer
            keyframes = 0
            answered_in = None
            asked_at = 0.0
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline and answered_in is None:
                data, source = video.recvfrom(65536)
                p = parse_rtp(data)
                if not stap_a(p.payload):
                    continue
                keyframes += 1
                if asked_at:
                    answered_in = time.monotonic() - asked_at
                elif keyframes == 2:  # right after a keyframe: the next one is ~1 s away
                    asked_at = time.monotonic()
                    video.sendto(compound(Pli(0x42, p.ssrc)), source)
        assert answered_in is not None and answered_in < 0.3, answered_in
        viewer = next(s for s in gateway.call(gateway.gw.ctx.sessions.stats)
                      if s["role"] == "play" and s["key"] == "live/pligop")
        assert viewer["plis"] == 1, viewer
    finally:
        pub.stop()


def test_sps_and_pps_from_the_sdp(gateway: RunningGateway, tmp_path: Path) -> None:
    """A publisher that sends SPS/PPS only in its SDP (``sprop-parameter-sets``), never in
    band: its video is known from the SDP and its first IDR goes out."""
    from gateway.wire.rtp.h264 import format_sprop_parameter_sets
    from gateway.wire.rtp.packet import RtpPacket

    by_type = _h264_nals(tmp_path)
    sprop = format_sprop_parameter_sets([by_type[7][0], by_type[8][0]])
    sdp = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
           f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={sprop}\r\n")
    status, answer, _ = asyncio.run(_post(gateway.http_url("live/sprop/rtp/publish"), sdp))
    assert status == 201, answer
    port = rtp_sdp.parse(answer).media[0].port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.sendto(RtpPacket(96, 1, 0, 7, by_type[5][0], True).serialize(), ("127.0.0.1", port))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        stream = gateway.gw.hub.streams.get("live/sprop")
        if stream is not None and stream.gop:
            break
        time.sleep(0.02)
    stream = gateway.gw.hub.streams["live/sprop"]
    assert stream.tracks["video"].codec == "h264" and (stream.tracks["video"].width,
                                                       stream.tracks["video"].height) == (64, 64)
    assert stream.gop and stream.gop[0].keyframe
