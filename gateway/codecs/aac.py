"""AAC helpers: AudioSpecificConfig and ADTS headers.

The internal model carries raw AAC frames plus the AudioSpecificConfig (see
``gateway.media``); ADTS appears only at MPEG-TS and raw-stream edges, so it is converted
there. Malformed input raises ``AacError`` (a ``ValueError``) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ADTS_HEADER_SIZE",
    "AOT_AAC_LC",
    "AOT_AAC_MAIN",
    "AOT_PS",
    "AOT_SBR",
    "SAMPLE_RATES",
    "AacError",
    "AdtsHeader",
    "AudioSpecificConfig",
    "BitReader",
    "adts_header_for",
    "asc_from_adts",
    "build_adts_header",
    "build_asc",
    "parse_adts_header",
    "parse_asc",
    "split_adts",
    "strip_adts",
]


class AacError(ValueError):
    """Malformed or unsupported AAC configuration or framing."""


AOT_AAC_MAIN = 1
AOT_AAC_LC = 2
AOT_SBR = 5  # HE-AAC
AOT_PS = 29  # HE-AAC v2

SAMPLE_RATES: tuple[int, ...] = (
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
)  # fmt: skip
_RATE_INDEX = {rate: i for i, rate in enumerate(SAMPLE_RATES)}
# channelConfiguration -> channel count (0 = described by a program config element).
_CHANNELS = (0, 1, 2, 3, 4, 5, 6, 8, 0, 0, 0, 7, 8, 24, 8, 0)
_CONFIG_OF_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 8: 7, 7: 11, 24: 13}
ADTS_HEADER_SIZE = 7


class BitReader:
    """MSB-first bit reader; running out of data raises ``error`` (``AacError`` here, the
    caller's own type elsewhere: RTP payload formats read AU headers and LATM with it)."""

    __slots__ = ("_error", "_size", "_value", "_what", "pos")

    def __init__(self, data: bytes, error: type[ValueError] = AacError,
                 what: str = "AudioSpecificConfig") -> None:
        self._value = int.from_bytes(data, "big")
        self._size = len(data) * 8
        self._error = error
        self._what = what  # named in the error: "<what> truncated"
        self.pos = 0

    def u(self, n: int) -> int:
        end = self.pos + n
        if end > self._size:
            raise self._error(f"{self._what} truncated")
        self.pos = end
        return (self._value >> (self._size - end)) & ((1 << n) - 1)

    def take(self, n: int) -> bytes:
        """``n`` bits as bytes, zero-padded at the end."""
        value = self.u(n)
        pad = -n % 8
        return (value << pad).to_bytes((n + pad) // 8, "big")


def _object_type(bits: BitReader) -> int:
    aot = bits.u(5)
    return 32 + bits.u(6) if aot == 31 else aot


def _sample_rate(bits: BitReader) -> int:
    index = bits.u(4)
    if index == 15:
        rate = bits.u(24)
        if rate == 0:
            raise AacError("explicit sampling frequency 0")
        return rate
    if index >= len(SAMPLE_RATES):
        raise AacError(f"reserved sampling frequency index {index}")
    return SAMPLE_RATES[index]


@dataclass(frozen=True, slots=True)
class AudioSpecificConfig:
    """The parts of an AudioSpecificConfig the gateway uses.

    ``sample_rate``/``channels`` are what a decoder outputs: for explicitly signalled
    HE-AAC that is the SBR extension rate, and two channels for parametric stereo.
    """

    object_type: int  # audioObjectType as signalled first (5/29 for explicit HE-AAC)
    sample_rate: int
    channels: int  # 0 = defined by a program config element
    channel_config: int
    core_object_type: int  # the underlying codec (2 for HE-AAC over LC)
    core_sample_rate: int

    @property
    def sbr(self) -> bool:
        return self.object_type in (AOT_SBR, AOT_PS)

    @property
    def ps(self) -> bool:
        return self.object_type == AOT_PS


def parse_asc(data: bytes) -> AudioSpecificConfig:
    """Parse the leading fields of an AudioSpecificConfig (codec-specific tail ignored)."""
    bits = BitReader(bytes(data))
    object_type = _object_type(bits)
    if object_type == 0:
        raise AacError("audioObjectType 0 (null)")
    core_rate = _sample_rate(bits)
    channel_config = bits.u(4)
    if channel_config == 15 or (channel_config and _CHANNELS[channel_config] == 0):
        raise AacError(f"reserved channelConfiguration {channel_config}")
    channels = _CHANNELS[channel_config]
    sample_rate = core_rate
    core_type = object_type
    if object_type in (AOT_SBR, AOT_PS):
        sample_rate = _sample_rate(bits)
        core_type = _object_type(bits)
        if object_type == AOT_PS and channel_config == 1:
            channels = 2
    return AudioSpecificConfig(
        object_type=object_type,
        sample_rate=sample_rate,
        channels=channels,
        channel_config=channel_config,
        core_object_type=core_type,
        core_sample_rate=core_rate,
    )


class _BitWriter:
    __slots__ = ("size", "value")

    def __init__(self) -> None:
        self.value = 0
        self.size = 0

    def put(self, n: int, value: int) -> None:
        self.value = (self.value << n) | value
        self.size += n

    def to_bytes(self) -> bytes:
        pad = -self.size % 8
        return (self.value << pad).to_bytes((self.size + pad) // 8, "big")


def _put_object_type(out: _BitWriter, aot: int) -> None:
    if aot >= 32:
        out.put(5, 31)
        out.put(6, aot - 32)
    else:
        out.put(5, aot)


def _put_rate(out: _BitWriter, rate: int) -> None:
    index = _RATE_INDEX.get(rate)
    if index is None:
        out.put(4, 15)
        out.put(24, rate)
    else:
        out.put(4, index)


def build_asc(object_type: int, sample_rate: int, channels: int) -> bytes:
    """Build an AudioSpecificConfig for an encoder's output.

    For HE-AAC (5) and HE-AAC v2 (29) ``sample_rate``/``channels`` are the decoded output
    and the record uses explicit hierarchical signalling over an LC core at half the rate
    (a mono core for v2), mirroring ``parse_asc``.
    """
    if not 1 <= object_type <= 95 or object_type == 31:  # 31 is the escape code itself
        raise AacError(f"audioObjectType {object_type} cannot be signalled")
    if not 0 < sample_rate < 1 << 24:
        raise AacError(f"sample rate {sample_rate} out of range")
    hierarchical = object_type in (AOT_SBR, AOT_PS)
    if object_type == AOT_PS:
        if channels != 2:
            raise AacError("HE-AAC v2 (parametric stereo) output is always stereo")
        channels = 1
    config = _CONFIG_OF_CHANNELS.get(channels)
    if config is None:
        raise AacError(f"{channels} channels have no channelConfiguration")
    out = _BitWriter()
    _put_object_type(out, object_type)
    if hierarchical:
        if sample_rate % 2:
            raise AacError("HE-AAC output rate must be even")
        _put_rate(out, sample_rate // 2)
        out.put(4, config)
        _put_rate(out, sample_rate)
        _put_object_type(out, AOT_AAC_LC)
    else:
        _put_rate(out, sample_rate)
        out.put(4, config)
    out.put(3, 0)  # GASpecificConfig: frameLengthFlag, dependsOnCoreCoder, extensionFlag
    return out.to_bytes()


@dataclass(frozen=True, slots=True)
class AdtsHeader:
    """One ADTS frame header."""

    object_type: int  # profile + 1 (1..4)
    sample_rate: int
    channel_config: int
    frame_length: int  # header included
    header_length: int  # 7, or 9 with CRC
    raw_data_blocks: int  # number_of_raw_data_blocks_in_frame + 1

    @property
    def channels(self) -> int:
        return _CHANNELS[self.channel_config]

    @property
    def payload_length(self) -> int:
        return self.frame_length - self.header_length


def parse_adts_header(data: bytes) -> AdtsHeader:
    """Parse the ADTS header at the start of ``data`` (the payload need not be present)."""
    if len(data) < ADTS_HEADER_SIZE:
        raise AacError("ADTS header truncated")
    b = bytes(data[:ADTS_HEADER_SIZE])
    if b[0] != 0xFF or b[1] & 0xF0 != 0xF0:
        raise AacError("ADTS syncword missing")
    if b[1] & 0x06:
        raise AacError("ADTS layer must be 0")
    protection_absent = b[1] & 0x01
    index = (b[2] >> 2) & 0x0F
    if index >= len(SAMPLE_RATES):
        raise AacError(f"ADTS reserved sampling frequency index {index}")
    channel_config = ((b[2] & 0x01) << 2) | (b[3] >> 6)
    frame_length = ((b[3] & 0x03) << 11) | (b[4] << 3) | (b[5] >> 5)
    header_length = ADTS_HEADER_SIZE if protection_absent else ADTS_HEADER_SIZE + 2
    if frame_length < header_length:
        raise AacError(f"ADTS frame_length {frame_length} shorter than its header")
    return AdtsHeader(
        object_type=(b[2] >> 6) + 1,
        sample_rate=SAMPLE_RATES[index],
        channel_config=channel_config,
        frame_length=frame_length,
        header_length=header_length,
        raw_data_blocks=(b[6] & 0x03) + 1,
    )


def strip_adts(frame: bytes) -> tuple[AdtsHeader, bytes]:
    """Header and raw AAC payload of one complete ADTS frame."""
    header = parse_adts_header(frame)
    if len(frame) < header.frame_length:
        raise AacError(f"ADTS frame truncated ({len(frame)} of {header.frame_length} bytes)")
    return header, frame[header.header_length : header.frame_length]


def split_adts(data: bytes) -> list[tuple[AdtsHeader, bytes]]:
    """Split concatenated ADTS frames (e.g. one MPEG-TS PES payload) into raw frames."""
    frames: list[tuple[AdtsHeader, bytes]] = []
    pos = 0
    while pos < len(data):
        header = parse_adts_header(data[pos : pos + ADTS_HEADER_SIZE])
        end = pos + header.frame_length
        if end > len(data):
            raise AacError("ADTS frame truncated")
        frames.append((header, data[pos + header.header_length : end]))
        pos = end
    return frames


def build_adts_header(object_type: int, sample_rate: int, channels: int, payload_length: int) -> bytes:
    """7-byte ADTS header (no CRC, VBR buffer fullness) for one raw AAC frame."""
    if not 1 <= object_type <= 4:
        raise AacError(f"ADTS cannot carry audioObjectType {object_type}")
    index = _RATE_INDEX.get(sample_rate)
    if index is None:
        raise AacError(f"ADTS cannot signal sample rate {sample_rate}")
    config = _CONFIG_OF_CHANNELS.get(channels)
    if config is None or config > 7:
        raise AacError(f"ADTS cannot signal {channels} channels")
    frame_length = payload_length + ADTS_HEADER_SIZE
    if payload_length < 0 or frame_length > 0x1FFF:
        raise AacError(f"ADTS frame of {frame_length} bytes does not fit 13 bits")
    return bytes(
        (
            0xFF,
            0xF1,  # MPEG-4, layer 0, no CRC
            ((object_type - 1) << 6) | (index << 2) | (config >> 2),
            ((config & 0x03) << 6) | (frame_length >> 11),
            (frame_length >> 3) & 0xFF,
            ((frame_length & 0x07) << 5) | 0x1F,
            0xFC,  # buffer fullness 0x7FF (VBR), one raw data block
        )
    )


def adts_header_for(config: AudioSpecificConfig, payload_length: int) -> bytes:
    """ADTS header for a frame of a track; HE-AAC is signalled as its LC core (implicit SBR)."""
    channels = config.channels
    if config.ps:
        channels = 1
    return build_adts_header(config.core_object_type, config.core_sample_rate, channels, payload_length)


def asc_from_adts(header: AdtsHeader) -> bytes:
    """AudioSpecificConfig equivalent to an ADTS header (to describe an MPEG-TS track)."""
    if header.channel_config == 0:
        raise AacError("ADTS channel configuration 0 (PCE) is not supported")
    return build_asc(header.object_type, header.sample_rate, header.channels)
