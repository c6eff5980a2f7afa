"""H.264 bitstream helpers: decoder configuration records, SPS, AVCC <-> Annex B.

Ingests hand us AVCC (RTMP, FLV, MP4) or Annex B (WebRTC, MPEG-TS); the internal model is
AVCC (see ``gateway.media``), so conversion happens once at the edges. Everything is sans-I/O
and every malformed input raises ``H264Error`` (a ``ValueError``), never another exception,
because these parsers see bytes from the network.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "NAL_AUD",
    "NAL_END_SEQUENCE",
    "NAL_END_STREAM",
    "NAL_FILLER",
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SEI",
    "NAL_SLICE",
    "NAL_SPS",
    "AvcConfig",
    "H264Error",
    "Sps",
    "annexb_to_avcc",
    "avcc_nal_types",
    "avcc_to_annexb",
    "build_avc_config",
    "escape_rbsp",
    "extract_parameter_sets",
    "is_keyframe",
    "is_vcl",
    "join_annexb",
    "join_avcc",
    "level_value",
    "nal_length_size",
    "nal_type",
    "parse_avc_config",
    "parse_sps",
    "profile_name",
    "split_annexb",
    "split_avcc",
    "unescape_rbsp",
]


class H264Error(ValueError):
    """Malformed or unsupported H.264 data (the only exception these helpers raise)."""


NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_SEQUENCE = 10
NAL_END_STREAM = 11
NAL_FILLER = 12

START_CODE = b"\x00\x00\x00\x01"
_START3 = b"\x00\x00\x01"

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# profile_idc values whose avcC record carries the chroma/bit-depth extension (ISO 14496-15).
_AVCC_EXT_PROFILES = frozenset({100, 110, 122, 144})
_MAX_DIMENSION = 1 << 15
# Byte strings a caller may hand in; joined without intermediate copies.
Buffer = bytes | bytearray | memoryview
_LENGTH_STRUCTS = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


def nal_type(nal: bytes) -> int:
    """nal_unit_type of one NAL unit (header byte included)."""
    if not nal:
        raise H264Error("empty NAL unit")
    return nal[0] & 0x1F


def is_vcl(nal_unit_type: int) -> bool:
    """Whether the NAL type carries picture data (slices), as opposed to parameters/SEI."""
    return 1 <= nal_unit_type <= 5


def unescape_rbsp(data: bytes) -> bytes:
    """Remove emulation-prevention bytes.

    Left-to-right, non-overlapping matching of ``00 00 03`` is exactly the spec's
    byte-by-byte procedure, so ``bytes.replace`` does it at C speed.
    """
    return bytes(data).replace(b"\x00\x00\x03", b"\x00\x00")


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes (inverse of ``unescape_rbsp``); used to build NALs."""
    data = bytes(rbsp)
    if b"\x00\x00" not in data:
        return data
    out = bytearray()
    pos = 0
    size = len(data)
    while True:
        i = data.find(b"\x00\x00", pos)
        if i < 0:
            out += data[pos:]
            break
        out += data[pos : i + 2]
        nxt = i + 2
        if nxt == size:
            out.append(3)  # an RBSP may not end in 00 00 (cabac_zero_word rule)
            break
        if data[nxt] <= 3:
            out.append(3)
        pos = nxt
    return bytes(out)


class _BitReader:
    """MSB-first reader over an RBSP; running out of bits is an ``H264Error``."""

    __slots__ = ("_pos", "_size", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._size = len(data) * 8
        self._pos = 0

    @property
    def bits_left(self) -> int:
        return self._size - self._pos

    def u(self, n: int) -> int:
        end = self._pos + n
        if end > self._size:
            raise H264Error("SPS truncated")
        self._pos = end
        return (self._value >> (self._size - end)) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise H264Error("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros) if zeros else 0

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _ue_max(reader: _BitReader, limit: int, name: str) -> int:
    value = reader.ue()
    if value > limit:
        raise H264Error(f"{name} {value} out of range (max {limit})")
    return value


def profile_name(profile_idc: int, constraint_flags: int) -> str:
    """Human/planner profile name; constraint flags refine baseline and high variants."""
    cs1 = constraint_flags & 0x40
    cs3 = constraint_flags & 0x10
    cs4 = constraint_flags & 0x08
    cs5 = constraint_flags & 0x04
    if profile_idc == 66:
        return "constrained-baseline" if cs1 else "baseline"
    if profile_idc == 100:
        if cs4 and cs5:
            return "constrained-high"
        return "progressive-high" if cs4 else "high"
    if profile_idc == 110:
        if cs3:
            return "high10-intra"
        return "progressive-high10" if cs4 else "high10"
    if profile_idc == 122:
        return "high422-intra" if cs3 else "high422"
    if profile_idc == 244:
        return "high444-intra" if cs3 else "high444"
    return _PROFILE_NAMES.get(profile_idc, f"unknown-{profile_idc}")


_PROFILE_NAMES = {
    77: "main",
    88: "extended",
    44: "cavlc444-intra",
    83: "scalable-baseline",
    86: "scalable-high",
    118: "multiview-high",
    128: "stereo-high",
    134: "mfc-high",
    135: "mfc-depth-high",
    138: "multiview-depth-high",
    139: "enhanced-multiview-depth-high",
}


def level_value(profile_idc: int, constraint_flags: int, level_idc: int) -> float:
    """Level as a number (31 -> 3.1).

    Level 1b (``level_idc`` 11 + constraint_set3 in baseline/main/extended, or 9) lies
    between 1 and 1.1; it is reported as 1.1 so that "level <= x" checks stay safe.
    """
    if level_idc == 9 or (level_idc == 11 and profile_idc in (66, 77, 88) and constraint_flags & 0x10):
        return 1.1
    return level_idc / 10


@dataclass(frozen=True, slots=True)
class Sps:
    """What the gateway needs from a sequence parameter set."""

    profile_idc: int
    constraint_flags: int
    level_idc: int
    sps_id: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool
    coded_width: int
    coded_height: int
    width: int  # after frame cropping
    height: int
    max_num_ref_frames: int
    sar: tuple[int, int] = (0, 0)  # (0, 0) = unspecified
    num_units_in_tick: int = 0
    time_scale: int = 0
    fixed_frame_rate: bool = False
    # From VUI bitstream_restriction; None when the SPS does not say.
    max_num_reorder_frames: int | None = None
    max_dec_frame_buffering: int | None = None

    @property
    def profile(self) -> str:
        return profile_name(self.profile_idc, self.constraint_flags)

    @property
    def level(self) -> float:
        return level_value(self.profile_idc, self.constraint_flags, self.level_idc)

    @property
    def frame_rate(self) -> float | None:
        """Frames per second from VUI timing (two ticks per frame), None if absent."""
        if self.num_units_in_tick and self.time_scale:
            return self.time_scale / (2 * self.num_units_in_tick)
        return None

    @property
    def reorder_frames_guess(self) -> int | None:
        """Frames of reordering, using what the profile implies when the VUI is silent."""
        if self.max_num_reorder_frames is not None:
            return self.max_num_reorder_frames
        if self.profile_idc in (66, 44) or (
            self.profile_idc in (110, 122, 244) and self.constraint_flags & 0x10
        ):
            return 0  # baseline and intra-only profiles have no B slices
        return None

    @property
    def may_have_b_frames(self) -> bool:
        """Best guess: true unless the profile forbids reordering or the VUI says none."""
        guess = self.reorder_frames_guess
        return guess is None or guess > 0


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last = 8
    nxt = 8
    for _ in range(size):
        if nxt != 0:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise H264Error("delta_scale out of range")
            nxt = (last + delta + 256) % 256
        last = nxt if nxt != 0 else last


def _skip_hrd(reader: _BitReader) -> None:
    count = _ue_max(reader, 31, "cpb_cnt_minus1") + 1
    reader.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        reader.ue()
        reader.ue()
        reader.u(1)
    reader.u(20)  # four 5-bit delay/offset lengths


def parse_sps(nal: bytes) -> Sps:
    """Parse an SPS NAL unit (header byte included, emulation prevention still in place)."""
    data = bytes(nal)
    if len(data) < 4:
        raise H264Error("SPS too short")
    if data[0] & 0x80:
        raise H264Error("forbidden_zero_bit set")
    if data[0] & 0x1F != NAL_SPS:
        raise H264Error(f"not an SPS (NAL type {data[0] & 0x1F})")
    reader = _BitReader(unescape_rbsp(data[1:]))
    profile_idc = reader.u(8)
    constraint_flags = reader.u(8)
    level_idc = reader.u(8)
    sps_id = _ue_max(reader, 31, "seq_parameter_set_id")
    chroma_format_idc = 1
    separate_colour_plane = False
    bit_depth_luma = bit_depth_chroma = 8
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = _ue_max(reader, 3, "chroma_format_idc")
        if chroma_format_idc == 3:
            separate_colour_plane = reader.flag()
        bit_depth_luma = _ue_max(reader, 6, "bit_depth_luma_minus8") + 8
        bit_depth_chroma = _ue_max(reader, 6, "bit_depth_chroma_minus8") + 8
        reader.u(1)  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if reader.flag():
                    _skip_scaling_list(reader, 16 if i < 6 else 64)
    _ue_max(reader, 12, "log2_max_frame_num_minus4")
    poc_type = _ue_max(reader, 2, "pic_order_cnt_type")
    if poc_type == 0:
        _ue_max(reader, 12, "log2_max_pic_order_cnt_lsb_minus4")
    elif poc_type == 1:
        reader.u(1)
        reader.se()
        reader.se()
        for _ in range(_ue_max(reader, 255, "num_ref_frames_in_pic_order_cnt_cycle")):
            reader.se()
    max_num_ref_frames = _ue_max(reader, 16, "max_num_ref_frames")
    reader.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = reader.ue() + 1
    height_map_units = reader.ue() + 1
    frame_mbs_only = reader.flag()
    if not frame_mbs_only:
        reader.u(1)  # mb_adaptive_frame_field_flag
    reader.u(1)  # direct_8x8_inference_flag
    coded_width = width_mbs * 16
    coded_height = height_map_units * 16 * (1 if frame_mbs_only else 2)
    if coded_width > _MAX_DIMENSION or coded_height > _MAX_DIMENSION:
        raise H264Error(f"implausible picture size {coded_width}x{coded_height}")
    width, height = coded_width, coded_height
    if reader.flag():  # frame_cropping_flag
        left, right, top, bottom = reader.ue(), reader.ue(), reader.ue(), reader.ue()
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        if chroma_array_type == 0:
            unit_x, unit_y = 1, 1
        else:
            unit_x = 2 if chroma_array_type in (1, 2) else 1
            unit_y = 2 if chroma_array_type == 1 else 1
        unit_y *= 1 if frame_mbs_only else 2
        width -= (left + right) * unit_x
        height -= (top + bottom) * unit_y
        if width <= 0 or height <= 0:
            raise H264Error("frame cropping larger than the picture")
    sps = Sps(
        profile_idc=profile_idc,
        constraint_flags=constraint_flags,
        level_idc=level_idc,
        sps_id=sps_id,
        chroma_format_idc=chroma_format_idc,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        frame_mbs_only=frame_mbs_only,
        coded_width=coded_width,
        coded_height=coded_height,
        width=width,
        height=height,
        max_num_ref_frames=max_num_ref_frames,
    )
    if reader.flag():  # vui_parameters_present_flag
        sps = _parse_vui(reader, sps)
    return sps


def _parse_vui(reader: _BitReader, sps: Sps) -> Sps:
    """Add VUI fields; a truncated VUI keeps what was read (real encoders emit those)."""
    fields: dict[str, Any] = {}
    try:
        if reader.flag():  # aspect_ratio_info_present_flag
            idc = reader.u(8)
            if idc == 255:
                fields["sar"] = (reader.u(16), reader.u(16))
            elif idc < len(_SAR_TABLE):
                fields["sar"] = _SAR_TABLE[idc]
        if reader.flag():  # overscan_info_present_flag
            reader.u(1)
        if reader.flag():  # video_signal_type_present_flag
            reader.u(4)
            if reader.flag():  # colour_description_present_flag
                reader.u(24)
        if reader.flag():  # chroma_loc_info_present_flag
            reader.ue()
            reader.ue()
        if reader.flag():  # timing_info_present_flag
            num_units_in_tick = reader.u(32)
            time_scale = reader.u(32)
            fields["fixed_frame_rate"] = reader.flag()
            fields["num_units_in_tick"] = num_units_in_tick
            fields["time_scale"] = time_scale
        nal_hrd = reader.flag()
        if nal_hrd:
            _skip_hrd(reader)
        vcl_hrd = reader.flag()
        if vcl_hrd:
            _skip_hrd(reader)
        if nal_hrd or vcl_hrd:
            reader.u(1)  # low_delay_hrd_flag
        reader.u(1)  # pic_struct_present_flag
        if reader.flag():  # bitstream_restriction_flag
            reader.u(1)
            reader.ue()
            reader.ue()
            reader.ue()
            reader.ue()
            reorder = reader.ue()
            buffering = reader.ue()
            fields["max_num_reorder_frames"] = min(reorder, 16)
            fields["max_dec_frame_buffering"] = min(buffering, 16)
    except H264Error:
        pass
    return replace(sps, **fields) if fields else sps


_SAR_TABLE: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 1), (12, 11), (10, 11), (16, 11), (40, 33), (24, 11), (20, 11), (32, 11),
    (80, 33), (18, 11), (15, 11), (64, 33), (160, 99), (4, 3), (3, 2), (2, 1),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """A parsed AVCDecoderConfigurationRecord (ISO/IEC 14496-15 ``avcC``)."""

    profile_idc: int
    profile_compatibility: int
    level_idc: int
    nal_length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    # High-profile extension; None when the record omits it.
    chroma_format_idc: int | None = None
    bit_depth_luma: int | None = None
    bit_depth_chroma: int | None = None
    sps_ext: tuple[bytes, ...] = ()

    @property
    def profile(self) -> str:
        return profile_name(self.profile_idc, self.profile_compatibility)

    @property
    def level(self) -> float:
        return level_value(self.profile_idc, self.profile_compatibility, self.level_idc)


def _read_sets(data: bytes, pos: int, count: int, what: str) -> tuple[list[bytes], int]:
    sets: list[bytes] = []
    for _ in range(count):
        if pos + 2 > len(data):
            raise H264Error(f"avcC truncated in {what} length")
        size = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if size == 0 or pos + size > len(data):
            raise H264Error(f"avcC {what} length {size} invalid")
        sets.append(data[pos : pos + size])
        pos += size
    return sets, pos


def parse_avc_config(data: bytes) -> AvcConfig:
    """Parse an AVCDecoderConfigurationRecord (FLV/RTMP sequence header, MP4 ``avcC``)."""
    data = bytes(data)
    if len(data) < 7:
        raise H264Error("avcC too short")
    if data[0] != 1:
        raise H264Error(f"unsupported avcC configurationVersion {data[0]}")
    nal_length_size = (data[4] & 0x03) + 1
    if nal_length_size == 3:
        raise H264Error("avcC NAL length size 3 is invalid")
    sps, pos = _read_sets(data, 6, data[5] & 0x1F, "SPS")
    if pos >= len(data):
        raise H264Error("avcC truncated before PPS count")
    pps, pos = _read_sets(data, pos + 1, data[pos], "PPS")
    for nal in sps:
        if nal[0] & 0x1F != NAL_SPS:
            raise H264Error("avcC SPS entry is not an SPS NAL")
    for nal in pps:
        if nal[0] & 0x1F != NAL_PPS:
            raise H264Error("avcC PPS entry is not a PPS NAL")
    ext: dict[str, Any] = {}
    if data[1] in _AVCC_EXT_PROFILES and len(data) - pos >= 4:
        # Optional and often garbage in the wild: decoders ignore it, so do we when broken.
        try:
            sps_ext, _ = _read_sets(data, pos + 4, data[pos + 3], "SPS extension")
        except H264Error:
            pass
        else:
            ext = {
                "chroma_format_idc": data[pos] & 0x03,
                "bit_depth_luma": (data[pos + 1] & 0x07) + 8,
                "bit_depth_chroma": (data[pos + 2] & 0x07) + 8,
                "sps_ext": tuple(sps_ext),
            }
    return AvcConfig(
        profile_idc=data[1],
        profile_compatibility=data[2],
        level_idc=data[3],
        nal_length_size=nal_length_size,
        sps=tuple(sps),
        pps=tuple(pps),
        **ext,
    )


def nal_length_size(config: bytes) -> int:
    """The AVCC length-prefix size a track's avcC declares; 4 (the usual) when it has none."""
    return parse_avc_config(config).nal_length_size if config else 4


def _append_sets(out: bytearray, nals: Sequence[bytes], kind: int) -> None:
    for nal in nals:
        if not nal or nal[0] & 0x1F != kind or len(nal) > 0xFFFF:
            raise H264Error(f"invalid parameter set NAL (expected type {kind})")
        out += len(nal).to_bytes(2, "big")
        out += nal


def build_avc_config(sps: Sequence[bytes], pps: Sequence[bytes], nal_length_size: int = 4) -> bytes:
    """Build an AVCDecoderConfigurationRecord; profile/level come from the first SPS."""
    if not sps:
        raise H264Error("at least one SPS is needed")
    if nal_length_size not in _LENGTH_STRUCTS:
        raise H264Error(f"invalid NAL length size {nal_length_size}")
    if len(sps) > 31 or len(pps) > 255:
        raise H264Error("too many parameter sets")
    first = bytes(sps[0])
    if len(first) < 4 or first[0] & 0x1F != NAL_SPS:
        raise H264Error("first SPS is not an SPS NAL")
    out = bytearray((1, first[1], first[2], first[3], 0xFC | (nal_length_size - 1), 0xE0 | len(sps)))
    _append_sets(out, sps, NAL_SPS)
    out.append(len(pps))
    _append_sets(out, pps, NAL_PPS)
    if first[1] in _AVCC_EXT_PROFILES:
        info = parse_sps(first)
        out += bytes(
            (
                0xFC | info.chroma_format_idc,
                0xF8 | (info.bit_depth_luma - 8),
                0xF8 | (info.bit_depth_chroma - 8),
                0,
            )
        )
    return bytes(out)


def _avcc_spans(au: Buffer, nal_length_size: int) -> list[tuple[int, int]]:
    """(start, end) of each non-empty NAL; offsets let callers copy each byte only once."""
    try:
        unpack = _LENGTH_STRUCTS[nal_length_size].unpack_from
    except KeyError:
        raise H264Error(f"invalid NAL length size {nal_length_size}") from None
    spans: list[tuple[int, int]] = []
    pos = 0
    end = len(au)
    while pos < end:
        if pos + nal_length_size > end:
            raise H264Error("truncated NAL length prefix")
        (size,) = unpack(au, pos)
        pos += nal_length_size
        if size > end - pos:
            raise H264Error(f"NAL length {size} exceeds the {end - pos} bytes left")
        if size:
            spans.append((pos, pos + size))
        pos += size
    return spans


def split_avcc(au: bytes, nal_length_size: int = 4) -> list[bytes]:
    """Split a length-prefixed access unit into NAL units (zero-length entries dropped)."""
    return [bytes(au[start:end]) for start, end in _avcc_spans(au, nal_length_size)]


def avcc_nal_types(au: bytes, nal_length_size: int = 4) -> list[int]:
    """NAL types of an AVCC access unit, without copying payloads."""
    return [au[start] & 0x1F for start, _ in _avcc_spans(au, nal_length_size)]


def is_disposable(avcc_au: bytes, nal_length_size: int = 4) -> bool:
    """Whether no other picture references this one (every slice has ``nal_ref_idc`` 0, e.g.
    a non-reference B-frame): a decoder that skips it decodes everything else unchanged."""
    slices = [avcc_au[start] for start, _ in _avcc_spans(avcc_au, nal_length_size)
              if is_vcl(avcc_au[start] & 0x1F)]
    return bool(slices) and not any(b & 0x60 for b in slices)


def is_keyframe(avcc_au: bytes, nal_length_size: int = 4) -> bool:
    """Whether the access unit holds an IDR slice (a random access point)."""
    return NAL_IDR in avcc_nal_types(avcc_au, nal_length_size)


def join_avcc(nals: Iterable[Buffer], nal_length_size: int = 4) -> bytes:
    """Length-prefix NAL units into one AVCC access unit."""
    try:
        pack = _LENGTH_STRUCTS[nal_length_size].pack
    except KeyError:
        raise H264Error(f"invalid NAL length size {nal_length_size}") from None
    limit = 1 << (8 * nal_length_size)
    parts: list[Buffer] = []
    for nal in nals:
        if len(nal) >= limit:
            raise H264Error(f"NAL of {len(nal)} bytes does not fit a {nal_length_size}-byte length")
        parts.append(pack(len(nal)))
        parts.append(nal)
    return b"".join(parts)


def _annexb_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each NAL between start codes, trailing zero bytes excluded."""
    first = data.find(_START3)
    if first < 0:
        if data.count(0) != len(data):
            raise H264Error("no Annex B start code")
        return []
    if data.count(0, 0, first) != first:
        raise H264Error("garbage before the first Annex B start code")
    spans: list[tuple[int, int]] = []
    pos = first + 3
    size = len(data)
    find = data.find
    while pos < size:
        nxt = find(_START3, pos)
        stop = size if nxt < 0 else nxt
        while stop > pos and data[stop - 1] == 0:
            stop -= 1
        if stop > pos:
            spans.append((pos, stop))
        if nxt < 0:
            break
        pos = nxt + 3
    return spans


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream at start codes; trailing zero bytes are not NAL data."""
    return [bytes(data[start:end]) for start, end in _annexb_spans(data)]


def join_annexb(nals: Iterable[Buffer]) -> bytes:
    """Prefix each NAL with a 4-byte start code."""
    parts: list[Buffer] = [b"", *nals]  # one join = one allocation, even for big keyframes
    return START_CODE.join(parts) if len(parts) > 1 else b""


def avcc_to_annexb(
    au: bytes,
    config: AvcConfig | bytes | None = None,
    nal_length_size: int | None = None,
) -> bytes:
    """Convert an AVCC access unit to Annex B.

    With ``config``, an IDR access unit that lacks in-band SPS/PPS gets the configuration's
    parameter sets inserted (after a leading AUD), so a decoder can start there. Pass an
    ``AvcConfig`` parsed once rather than bytes on hot paths.
    """
    size = nal_length_size
    if size is None:
        size = config.nal_length_size if isinstance(config, AvcConfig) else 4
    spans = _avcc_spans(au, size)
    view = memoryview(au)
    nals: list[Buffer] = [view[start:end] for start, end in spans]
    if config is not None and spans:
        types = [au[start] & 0x1F for start, _ in spans]
        if NAL_IDR in types and NAL_SPS not in types:
            cfg = config if isinstance(config, AvcConfig) else parse_avc_config(config)
            at = 1 if types[0] == NAL_AUD else 0
            nals[at:at] = [*cfg.sps, *cfg.pps]
    return join_annexb(nals)


def annexb_to_avcc(data: bytes, nal_length_size: int = 4, drop: Iterable[int] = ()) -> bytes:
    """Convert an Annex B access unit to AVCC, leaving out NAL types in ``drop``.

    Typical ``drop``: ``{NAL_SPS, NAL_PPS, NAL_AUD}`` once the parameter sets have been
    moved into the track configuration.
    """
    dropped = frozenset(drop)
    view = memoryview(data)
    return join_avcc(
        (view[start:end] for start, end in _annexb_spans(data) if data[start] & 0x1F not in dropped),
        nal_length_size,
    )


def extract_parameter_sets(annexb_au: bytes) -> tuple[list[bytes], list[bytes]]:
    """SPS and PPS NAL units carried in-band in an Annex B access unit (deduplicated)."""
    sps: list[bytes] = []
    pps: list[bytes] = []
    for start, end in _annexb_spans(annexb_au):
        kind = annexb_au[start] & 0x1F
        if kind in (NAL_SPS, NAL_PPS):
            nal = bytes(annexb_au[start:end])
            found = sps if kind == NAL_SPS else pps
            if nal not in found:
                found.append(nal)
    return sps, pps
