"""Gateway configuration: embedded defaults, optionally overridden by a TOML file and CLI flags.

Every key is optional; ``gateway serve`` with no file runs on these defaults.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .cpus import usable_cpus
from .hub.fanout import Limits


class ConfigError(ValueError):
    pass


#: ``transcode_capacity = -1``: this many 720p30 H.264 -> MPEG-1 transcodes per CPU. On the
#: 2-CPU test machine 14 kept 30 fps with video p99 23-85 ms; at 16 p99 reached 150-400 ms, and
#: at 17 every variant fell behind (bench/transcode.py).
CAPACITY_PER_CPU = 7.0


@dataclass(slots=True)
class Config:
    host: str = "0.0.0.0"
    rtmp_port: int = 1935
    http_port: int = 8080
    log_level: str = "info"
    # A publisher or player is classified ``miniprogram`` when its RTMP app is one of these,
    # or when its URL carries ``?client=miniprogram`` (see README).
    miniprogram_apps: list[str] = field(default_factory=lambda: ["miniprogram"])
    matrix_dir: str = ""  # empty: the matrix shipped with the gateway
    limits: Limits = field(default_factory=Limits)
    max_message_size: int = 16 << 20  # largest RTMP message accepted from a peer
    # Seconds a publisher (RTMP, MPEG-TS POST/WebSocket) may send nothing before it is
    # disconnected and its stream ends, so a hung encoder does not hold the stream key; 0: never.
    publish_timeout: float = 10.0
    # Where transcode steps run: -1 one worker process per CPU, 0 threads in the gateway
    # process (GIL-bound: several times the latency under load), N that many processes.
    transcode_processes: int = -1
    # Codec threads per transcode process. More than 1 lets a process use a core another one
    # leaves idle; on 2 CPUs it measured no better than the default (see transcode/pool.py).
    transcode_threads: int = 1
    # Start the transcode processes with the gateway instead of with the first transcode: that
    # transcode then starts ~0.3 s sooner, at ~45 MB RSS per process while none is needed.
    transcode_prestart: bool = False
    # How much transcoding may run at once, in 720p30 H.264 -> MPEG-1 transcodes (each step's
    # ``cost`` in matrix/transcodes.toml, video scaled by pixel rate). A viewer whose variant
    # would go past it is refused (HTTP 503 with Retry-After, RTMP NetStream.Play.Failed); the
    # running variants keep their speed. -1: CAPACITY_PER_CPU per CPU this process may use
    # (``cpus.usable_cpus``: affinity, capped by a container's CPU quota);
    # 0: no limit.
    transcode_capacity: float = -1.0
    # ``udp`` (RTP) sessions: the UDP ports they get (RTP on even ports, RTCP on the next one)
    # and how many may run at once.
    rtp_port_min: int = 30000
    rtp_port_max: int = 30999
    rtp_max_sessions: int = 200
    rtp_mtu: int = 1200  # largest RTP payload sent (H.264 is cut into FU-A fragments to fit)
    # Static ingest for devices that cannot do HTTP set-up (README, "RTP"): RTP described by
    # an inline SDP whose m= ports are the gateway's, ``[{port, key, sdp}]`` (``port``: the
    # first m= port, for the error messages), and MPEG-TS over UDP, ``[{port, key}]``.
    rtp_inputs: list[dict[str, Any]] = field(default_factory=list)
    mpegts_inputs: list[dict[str, Any]] = field(default_factory=list)

    def effective_transcode_capacity(self) -> float:
        if self.transcode_capacity >= 0:
            return self.transcode_capacity
        return CAPACITY_PER_CPU * usable_cpus()


def _apply(obj: Any, data: dict[str, Any], where: str) -> None:
    names = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if isinstance(current, Limits):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table")
            _apply(current, value, f"{where}.{key}")
            continue
        expected = type(current)
        if expected is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
        setattr(obj, key, value)


def load(path: str | Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the TOML file's ``[gateway]`` table (or top level), then non-None overrides."""
    cfg = Config()
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{p}: {e}") from e
        _apply(cfg, data.get("gateway", data), str(p))
    _apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    return cfg
