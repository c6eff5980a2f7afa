"""FLV: file header, tags and the audio/video/script tag bodies (sans-I/O).

RTMP audio/video messages carry exactly FLV tag bodies, so the RTMP ingest uses the body
parsers, HTTP-FLV/WS-FLV egress the encoders, and HTTP-FLV pull the streaming
``FlvReader``. Garbage input raises ``FlvError`` (a ``ValueError``) only. The glue at the
end maps sequence headers and metadata to and from ``gateway.media.Track``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..codecs import aac, h264
from ..media import Track

__all__ = [
    "AAC_RAW",
    "AAC_SEQUENCE_HEADER",
    "AVC_END_OF_SEQUENCE",
    "AVC_NALU",
    "AVC_SEQUENCE_HEADER",
    "FLV_HEADER",
    "FRAME_INTER",
    "FRAME_KEY",
    "SOUND_FORMAT_AAC",
    "TAG_AUDIO",
    "TAG_SCRIPT",
    "TAG_VIDEO",
    "VIDEO_CODEC_AVC",
    "AudioTag",
    "FlvError",
    "FlvHeader",
    "FlvReader",
    "Tag",
    "VideoTag",
    "aac_config_of",
    "audio_body_aac",
    "audio_seq_header_aac",
    "avc_config_of",
    "encode_tag",
    "on_metadata",
    "parse_audio_body",
    "parse_script_body",
    "parse_video_body",
    "script_tag_body",
    "track_from_aac_config",
    "track_from_avc_config",
    "video_body_avc",
    "video_end_of_sequence_avc",
    "video_seq_header_avc",
]


class FlvError(ValueError):
    """Malformed FLV data, or a value FLV cannot represent."""


TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

VIDEO_CODEC_AVC = 7
SOUND_FORMAT_AAC = 10
#: Names of the FLV codec ids, for messages (12 and 13 are the widespread non-standard HEVC and
#: AV1 ids of Chinese CDNs and their encoders).
VIDEO_CODEC_NAMES = {2: "Sorenson H.263", 3: "Screen video", 4: "On2 VP6", 5: "On2 VP6 with alpha",
                     6: "Screen video 2", 7: "H.264", 12: "HEVC (codec id 12)",
                     13: "AV1 (codec id 13)"}
SOUND_FORMAT_NAMES = {0: "PCM", 1: "ADPCM", 2: "MP3", 3: "PCM", 4: "Nellymoser", 5: "Nellymoser",
                      6: "Nellymoser", 7: "G.711 A-law", 8: "G.711 mu-law", 10: "AAC",
                      11: "Speex", 14: "MP3", 15: "device-specific audio"}

AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2
AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1

FRAME_KEY = 1
FRAME_INTER = 2
FRAME_GENERATED_KEY = 4
FRAME_INFO = 5

TAG_HEADER_SIZE = 11
FILE_HEADER_SIZE = 9
DEFAULT_MAX_TAG_SIZE = 8 << 20
_MAX_HEADER_EXTRA = 1024
_CTS_MIN = -(1 << 23)
_CTS_MAX = (1 << 23) - 1

_TAG_HEADER = struct.Struct(">IIHB")  # type|size, ts24|ts_ext, stream id (3 bytes)
_U32 = struct.Struct(">I")
_VIDEO_HEADER = struct.Struct(">BI")  # frame type|codec, packet type|cts24
_HEADERS = {
    (audio, video): b"FLV\x01" + bytes((audio << 2 | video,)) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"
    for audio in (False, True)
    for video in (False, True)
}
_AAC_PREFIX = {AAC_SEQUENCE_HEADER: b"\xaf\x00", AAC_RAW: b"\xaf\x01"}
_RATES = (5512, 11025, 22050, 44100)


def _amf0() -> ModuleType:
    """The AMF0 codec, imported on first use so the RTMP package can import us without a cycle."""
    from .rtmp import amf0

    return amf0


# --- encoding ------------------------------------------------------------------------------


def FLV_HEADER(has_audio: bool = True, has_video: bool = True) -> bytes:  # noqa: N802
    """9-byte file header followed by PreviousTagSize0, i.e. everything before the first tag."""
    return _HEADERS[bool(has_audio), bool(has_video)]


def encode_tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """One complete tag: 11-byte header, body, PreviousTagSize.

    Timestamps are FLV's 32-bit milliseconds (24 bits + extension byte); past 2**32 ms
    (~49.7 days) they wrap, as players expect.
    """
    size = len(body)
    if size > 0xFFFFFF:
        raise FlvError(f"tag body of {size} bytes exceeds 24 bits")
    if timestamp_ms < 0:
        raise FlvError(f"negative tag timestamp {timestamp_ms}")
    if not 0 <= tag_type <= 0x1F:
        raise FlvError(f"invalid tag type {tag_type}")
    ts = timestamp_ms & 0xFFFFFFFF
    header = _TAG_HEADER.pack((tag_type << 24) | size, ((ts & 0xFFFFFF) << 8) | (ts >> 24), 0, 0)
    return b"".join((header, body, _U32.pack(size + TAG_HEADER_SIZE)))


def video_body_avc(frame_keyframe: bool, avc_packet_type: int, cts: int, payload: bytes) -> bytes:
    """AVC video tag body; ``cts`` (pts - dts, ms) is signed 24-bit, negative with B-frames."""
    if not _CTS_MIN <= cts <= _CTS_MAX:
        raise FlvError(f"composition time {cts} does not fit signed 24 bits")
    if not 0 <= avc_packet_type <= 0xFF:
        raise FlvError(f"invalid AVC packet type {avc_packet_type}")
    first = 0x17 if frame_keyframe else 0x27
    return _VIDEO_HEADER.pack(first, (avc_packet_type << 24) | (cts & 0xFFFFFF)) + payload


def video_seq_header_avc(avc_config: bytes) -> bytes:
    """Sequence header body carrying the AVCDecoderConfigurationRecord."""
    return video_body_avc(True, AVC_SEQUENCE_HEADER, 0, avc_config)


def video_end_of_sequence_avc() -> bytes:
    """End-of-sequence body, sent before a publisher's stream stops or changes config."""
    return video_body_avc(True, AVC_END_OF_SEQUENCE, 0, b"")


def audio_body_aac(packet_type: int, payload: bytes, sample_rate: int = 44100, channels: int = 2) -> bytes:
    """AAC audio tag body.

    The flags byte is always 0xAF (AAC, 44 kHz, 16-bit, stereo): the FLV spec requires it
    for AAC and decoders take the real rate/channels from the AudioSpecificConfig, so
    ``sample_rate``/``channels`` are accepted for call-site symmetry and do not change it.
    """
    try:
        return _AAC_PREFIX[packet_type] + payload
    except KeyError:
        raise FlvError(f"invalid AAC packet type {packet_type}") from None


def audio_seq_header_aac(asc: bytes) -> bytes:
    """Sequence header body carrying the AudioSpecificConfig."""
    return _AAC_PREFIX[AAC_SEQUENCE_HEADER] + asc


def script_tag_body(name: str, values: Mapping[str, Any]) -> bytes:
    """Script data body, e.g. ``onMetaData`` + ECMA array (a plain dict is sent as one)."""
    amf0 = _amf0()
    if not isinstance(values, amf0.ECMAArray):
        values = amf0.ECMAArray(values)
    return bytes(amf0.encode(name, values))


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VideoTag:
    """A parsed video tag body; AVC fields are None/0 for other codecs."""

    codec_id: int
    frame_type: int
    avc_packet_type: int | None
    cts: int  # signed composition time offset in ms
    payload: bytes

    @property
    def keyframe(self) -> bool:
        return self.frame_type in (FRAME_KEY, FRAME_GENERATED_KEY)

    @property
    def is_avc_sequence_header(self) -> bool:
        return self.codec_id == VIDEO_CODEC_AVC and self.avc_packet_type == AVC_SEQUENCE_HEADER


@dataclass(frozen=True, slots=True)
class AudioTag:
    """A parsed audio tag body; rate/size/channels are the nominal flags (AAC: see ASC)."""

    sound_format: int
    rate: int  # Hz
    size: int  # bits per sample
    channels: int
    aac_packet_type: int | None
    payload: bytes

    @property
    def is_aac_sequence_header(self) -> bool:
        return self.sound_format == SOUND_FORMAT_AAC and self.aac_packet_type == AAC_SEQUENCE_HEADER


def parse_video_body(body: bytes) -> VideoTag:
    """Parse a video tag body (also an RTMP video message)."""
    if not body:
        raise FlvError("empty video tag body")
    first = body[0]
    if first & 0x80:  # Enhanced RTMP (OBS, FFmpeg 6.1+ for HEVC, AV1, VP9): a FourCC follows
        fourcc = bytes(body[1:5]).decode("ascii", "replace") if len(body) >= 5 else "?"
        raise FlvError(f"Enhanced RTMP video ({fourcc}) is not supported; publish H.264")
    frame_type = first >> 4
    codec_id = first & 0x0F
    if not FRAME_KEY <= frame_type <= FRAME_INFO:
        raise FlvError(f"invalid video frame type {frame_type}")
    if codec_id != VIDEO_CODEC_AVC or (frame_type == FRAME_INFO and len(body) < 5):
        return VideoTag(codec_id, frame_type, None, 0, bytes(body[1:]))
    if len(body) < 5:
        raise FlvError("AVC video tag body shorter than its 5-byte header")
    packet_type = body[1]
    if packet_type > AVC_END_OF_SEQUENCE:
        raise FlvError(f"invalid AVC packet type {packet_type}")
    cts = int.from_bytes(body[2:5], "big", signed=True)
    return VideoTag(codec_id, frame_type, packet_type, cts, bytes(body[5:]))


def parse_audio_body(body: bytes) -> AudioTag:
    """Parse an audio tag body (also an RTMP audio message)."""
    if not body:
        raise FlvError("empty audio tag body")
    first = body[0]
    sound_format = first >> 4
    rate = _RATES[(first >> 2) & 0x03]
    size = 16 if first & 0x02 else 8
    channels = 2 if first & 0x01 else 1
    if sound_format != SOUND_FORMAT_AAC:
        return AudioTag(sound_format, rate, size, channels, None, bytes(body[1:]))
    if len(body) < 2:
        raise FlvError("AAC audio tag body shorter than its 2-byte header")
    packet_type = body[1]
    if packet_type > AAC_RAW:
        raise FlvError(f"invalid AAC packet type {packet_type}")
    return AudioTag(sound_format, rate, size, channels, packet_type, bytes(body[2:]))


def parse_script_body(body: bytes) -> tuple[str, list[Any]]:
    """Name and values of a script tag, unwrapping RTMP's ``@setDataFrame`` prefix."""
    amf0 = _amf0()
    try:
        values = list(amf0.decode_all(bytes(body)))
    except ValueError as exc:  # AMF0Error and anything else the decoder rejects
        raise FlvError(f"bad AMF0 in script tag: {exc}") from exc
    if values and values[0] == "@setDataFrame":
        values = values[1:]
    if not values or not isinstance(values[0], str):
        raise FlvError("script tag does not start with a name string")
    return values[0], values[1:]


@dataclass(frozen=True, slots=True)
class Tag:
    """One FLV tag as read from a file or HTTP-FLV stream."""

    tag_type: int
    timestamp: int  # ms, 32-bit
    body: bytes


@dataclass(frozen=True, slots=True)
class FlvHeader:
    version: int
    has_audio: bool
    has_video: bool


class FlvReader:
    """Incremental FLV demuxer: feed bytes as they arrive, get complete tags back.

    Tags are returned as soon as their body is complete (the trailing PreviousTagSize is
    skipped, not checked, as muxers get it wrong in practice). ``max_tag_size`` bounds how
    much a hostile or broken peer can make us buffer. After an ``FlvError`` the reader is
    unusable.
    """

    def __init__(self, max_tag_size: int = DEFAULT_MAX_TAG_SIZE) -> None:
        self.header: FlvHeader | None = None
        self._max_tag_size = max_tag_size
        self._buf = bytearray()
        self._skip = 0
        self._failed = False

    def receive_data(self, data: bytes) -> list[Tag]:
        """Feed bytes as they arrive; returns the tags they complete, possibly none."""
        if self._failed:
            raise FlvError("FLV reader already failed")
        self._buf += data
        try:
            return self._parse()
        except FlvError:
            self._failed = True
            raise

    def close(self) -> None:
        """Signal end of input; raise if it stopped in the middle of the header or a tag."""
        if self.header is None or self._buf:
            self._failed = True
            raise FlvError("FLV stream truncated")

    def _parse(self) -> list[Tag]:
        buf = self._buf
        pos = 0
        if self.header is None:
            pos = self._parse_header()
            if self.header is None:
                return []
        tags: list[Tag] = []
        size_total = len(buf)
        unpack = _U32.unpack_from
        with memoryview(buf) as view:
            while True:
                if self._skip:
                    take = min(self._skip, size_total - pos)
                    pos += take
                    self._skip -= take
                    if self._skip:
                        break
                if size_total - pos < TAG_HEADER_SIZE:
                    break
                (word,) = unpack(buf, pos)
                if word & 0xE0000000:
                    raise FlvError("FLV tag with reserved or encryption bits set")
                size = word & 0xFFFFFF
                if size > self._max_tag_size:
                    raise FlvError(f"FLV tag of {size} bytes exceeds the {self._max_tag_size} limit")
                end = pos + TAG_HEADER_SIZE + size
                if end > size_total:
                    break
                (ts_word,) = unpack(buf, pos + 4)
                timestamp = (ts_word >> 8) | ((ts_word & 0xFF) << 24)
                tags.append(Tag(word >> 24, timestamp, bytes(view[pos + TAG_HEADER_SIZE : end])))
                pos = end
                self._skip = 4  # PreviousTagSize
        del buf[:pos]
        return tags

    def _parse_header(self) -> int:
        buf = self._buf
        if buf[:3] != b"FLV"[: len(buf)]:
            raise FlvError("not an FLV stream (bad signature)")
        if len(buf) < FILE_HEADER_SIZE:
            return 0
        if buf[3] != 1:
            raise FlvError(f"unsupported FLV version {buf[3]}")
        (offset,) = _U32.unpack_from(buf, 5)
        if not FILE_HEADER_SIZE <= offset <= FILE_HEADER_SIZE + _MAX_HEADER_EXTRA:
            raise FlvError(f"invalid FLV header DataOffset {offset}")
        self.header = FlvHeader(version=buf[3], has_audio=bool(buf[4] & 0x04), has_video=bool(buf[4] & 0x01))
        self._skip = offset - FILE_HEADER_SIZE + 4  # extra header bytes + PreviousTagSize0
        return FILE_HEADER_SIZE


# --- glue to the internal model ------------------------------------------------------------

# A VUI frame rate above this is a timebase, not a frame rate (e.g. x264 with a 1/1000 clock).
_MAX_PLAUSIBLE_FPS = 240.0

# onMetaData keys that describe the stream technically: ours win over the publisher's.
_OWNED_KEYS = frozenset(
    {
        "duration", "width", "height", "framerate", "fps", "videocodecid", "videodatarate",
        "audiocodecid", "audiosamplerate", "audiosamplesize", "stereo", "audiochannels",
        "audiodatarate", "encoder", "filesize", "datasize", "videosize", "audiosize",
        "lasttimestamp", "lastkeyframetimestamp", "lastkeyframelocation", "keyframes",
        "hasVideo", "hasAudio", "hasKeyframes", "hasMetadata", "canSeekToEnd",
        "avcprofile", "avclevel", "aacaot", "videokeyframe_frequency",
    }
)  # fmt: skip


def _meta_number(metadata: Mapping[str, Any] | None, *keys: str) -> float:
    """First positive finite number among ``keys`` (publishers send junk too), else 0."""
    if not metadata:
        return 0.0
    for key in keys:
        value = metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value) and value > 0:
            return float(value)
    return 0.0


def track_from_avc_config(config: bytes, metadata: Mapping[str, Any] | None = None) -> Track:
    """Video ``Track`` from an AVC sequence header payload (raises ``H264Error`` if invalid).

    The SPS is authoritative; publisher metadata only fills the frame rate when the VUI has
    none (or an implausible one) and the bitrate, which the bitstream never states.
    """
    record = h264.parse_avc_config(config)
    if not record.sps:
        raise h264.H264Error("AVC configuration without SPS")
    sps = h264.parse_sps(record.sps[0])
    fps = sps.frame_rate
    if fps is None or not 0 < fps <= _MAX_PLAUSIBLE_FPS:
        fps = _meta_number(metadata, "framerate", "fps")
    return Track(
        kind="video",
        codec="h264",
        config=bytes(config),
        width=sps.width,
        height=sps.height,
        frame_rate=fps,
        profile=sps.profile,
        level=sps.level,
        has_b_frames=sps.may_have_b_frames,
        bitrate=int(_meta_number(metadata, "videodatarate") * 1000),
    )


def track_from_aac_config(asc: bytes, metadata: Mapping[str, Any] | None = None) -> Track:
    """Audio ``Track`` from an AAC sequence header payload (raises ``AacError`` if invalid)."""
    info = aac.parse_asc(asc)
    return Track(
        kind="audio",
        codec="aac",
        config=bytes(asc),
        sample_rate=info.sample_rate,
        channels=info.channels,
        bitrate=int(_meta_number(metadata, "audiodatarate") * 1000),
    )


def avc_config_of(track: Track) -> bytes:
    """The sequence header payload for a video track, checked before it goes on the wire."""
    if track.codec != "h264":
        raise FlvError(f"FLV egress needs h264 video, not {track.codec}")
    if not track.config:
        raise FlvError("h264 track has no decoder configuration")
    h264.parse_avc_config(track.config)
    return track.config


def aac_config_of(track: Track) -> bytes:
    """The sequence header payload for an audio track, checked before it goes on the wire."""
    if track.codec != "aac":
        raise FlvError(f"FLV egress needs aac audio, not {track.codec}")
    if not track.config:
        raise FlvError("aac track has no AudioSpecificConfig")
    aac.parse_asc(track.config)
    return track.config


def on_metadata(
    tracks: Mapping[str, Track],
    extra: Mapping[str, Any] | None = None,
    *,
    encoder: str = "mediagateway",
) -> dict[str, Any]:
    """Complete onMetaData (an AMF0 ``ECMAArray``) describing what we actually send.

    Keys for an absent track are left out (players wait for announced tracks); publisher
    extras are kept unless they describe the stream technically, since after transcoding
    those would lie.
    """
    meta: dict[str, Any] = {"duration": 0.0}
    video = tracks.get("video")
    if video is not None:
        if video.codec != "h264":
            raise FlvError(f"FLV cannot carry {video.codec} video")
        meta.update(
            width=float(video.width),
            height=float(video.height),
            framerate=float(video.frame_rate),
            videocodecid=float(VIDEO_CODEC_AVC),
            videodatarate=video.bitrate / 1000,
        )
    audio = tracks.get("audio")
    if audio is not None:
        if audio.codec != "aac":
            raise FlvError(f"FLV cannot carry {audio.codec} audio")
        meta.update(
            audiocodecid=float(SOUND_FORMAT_AAC),
            audiosamplerate=float(audio.sample_rate),
            audiosamplesize=16.0,
            stereo=audio.channels >= 2,
            audiochannels=float(audio.channels),
            audiodatarate=audio.bitrate / 1000,
        )
    meta["encoder"] = encoder
    for key, value in (extra or {}).items():
        if key not in _OWNED_KEYS and key not in meta:
            meta[key] = value
    ecma: dict[str, Any] = _amf0().ECMAArray(meta)
    return ecma
