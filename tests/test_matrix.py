"""The matrix data: the derived table equals the design seed, data drives behaviour, bad data fails loudly."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` without an installed package
    sys.path.insert(0, str(ROOT))

from gateway.cli import main
from gateway.media import Track
from gateway.planner import (
    ENV_VAR,
    MatrixError,
    PassThrough,
    Transcode,
    find_matrix_dir,
    load_matrix,
    plan,
    render_table,
    table,
    transcode_cost,
)

MATRIX_DIR = ROOT / "matrix"
SEED = Path(__file__).resolve().parents[1].parent / "shared" / "seed-matrix.tsv"


def seed_lines() -> list[str]:
    if not SEED.is_file():
        pytest.skip(f"design seed {SEED} not found (expected ../shared next to the project root)")
    return [l for l in SEED.read_text(encoding="utf-8").splitlines() if l and not l.startswith("#")]


@pytest.fixture(scope="module")
def matrix():
    return load_matrix(MATRIX_DIR)


@pytest.fixture
def matrix_copy(tmp_path: Path) -> Path:
    d = tmp_path / "matrix"
    shutil.copytree(MATRIX_DIR, d)
    return d


def edit_after(path: Path, header: str, old: str, new: str) -> None:
    """Replace the first ``old`` after the TOML table ``header`` (the file keeps its comments)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(header) + len(header)
    at = text.index(old, start)
    path.write_text(text[:at] + new + text[at + len(old):], encoding="utf-8")


# --- the table --------------------------------------------------------------------------------


def test_tsv_equals_seed_cell_by_cell(matrix) -> None:
    expected = [l.split("\t") for l in seed_lines()]
    rendered = render_table(matrix, "tsv")
    assert rendered.endswith("\n")
    got = [l.split("\t") for l in rendered.splitlines()]
    assert got[0] == expected[0], "header (protocol order) differs from the seed"
    assert len(got) == len(expected)
    mismatches = [
        f"{e[0]} -> {expected[0][j]}: seed {e[j]!r}, derived {g[j]!r}"
        for e, g in zip(expected[1:], got[1:], strict=False)
        for j in range(len(e))
        if g[j] != e[j]
    ]
    assert not mismatches, "\n".join(mismatches)
    assert rendered == "".join(l + "\n" for l in seed_lines())


def test_text_table_is_aligned_with_legend(matrix) -> None:
    text = render_table(matrix, "text")
    lines = text.splitlines()
    assert lines[0].split() == ["from\\to", *matrix.play_protocols]
    header_cols = [lines[0].index(p) for p in matrix.play_protocols]
    for line in lines[2:8]:
        starts = [i for i in range(len(line)) if line[i] != " " and (i == 0 or line[i - 1] == " ")]
        assert starts[1:] == header_cols
    for word in ("none", "video", "audio", "maybe"):
        assert any(l.startswith(word) for l in lines[9:]), f"legend lacks {word}"
    with pytest.raises(ValueError):
        render_table(matrix, "html")  # type: ignore[arg-type]


def test_table_shape(matrix) -> None:
    t = table(matrix)
    assert list(t) == ["webrtc", "h5", "miniprogram", "rtmp", "udp", "cdn"]
    assert all(t[p][p] == "none" for p in t)


def test_cli_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--matrix-dir", str(MATRIX_DIR), "--format", "tsv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("from\\to\t")


def test_cli_reports_invalid_data(matrix_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (matrix_copy / "codecs.toml").write_text("kinds = [", encoding="utf-8")
    assert main(["matrix", "--matrix-dir", str(matrix_copy)]) == 2
    assert "codecs.toml" in capsys.readouterr().err


# --- data drives behaviour -------------------------------------------------------------------


def test_rtmp_playing_opus_is_a_data_change(matrix, matrix_copy: Path) -> None:
    opus_source = {
        "video": Track("video", "h264", width=1280, height=720, frame_rate=30.0),
        "audio": Track("audio", "opus", sample_rate=48000, channels=2),
    }
    before = plan(matrix, opus_source, "rtmp")
    assert before["audio"] == Transcode("audio", "opus", "aac", before["audio"].params)  # type: ignore[union-attr]

    edit_after(matrix_copy / "protocols.toml", "[rtmp.play.audio]", 'codecs = ["aac"]', 'codecs = ["aac", "opus"]')
    edited = load_matrix(matrix_copy)

    after = plan(edited, opus_source, "rtmp")
    assert after["audio"] == PassThrough("audio", "opus")
    assert after.passthrough_all
    # AAC stays the preferred target for sources that must be transcoded anyway
    mp2 = {"audio": Track("audio", "mp2", sample_rate=44100, channels=2)}
    assert plan(edited, mp2, "rtmp")["audio"].to_codec == "aac"  # type: ignore[union-attr]

    old, new = table(matrix), table(edited)
    assert (old["webrtc"]["rtmp"], new["webrtc"]["rtmp"]) == ("audio", "none")
    assert (old["udp"]["rtmp"], new["udp"]["rtmp"]) == ("maybe", "none")
    changed = {(r, c) for r in old for c in old[r] if old[r][c] != new[r][c]}
    assert changed == {("webrtc", "rtmp"), ("udp", "rtmp")}


def test_disabling_a_step_drops_the_track(matrix_copy: Path) -> None:
    edit_after(matrix_copy / "transcodes.toml", 'to = "mp2"', "params =", "enabled = false\nparams =")
    m = load_matrix(matrix_copy)
    p = plan(m, {"audio": Track("audio", "aac", sample_rate=44100, channels=2)}, "h5")
    assert p["audio"].__class__.__name__ == "Drop"
    assert "aac -> mp2" in p["audio"].reason  # type: ignore[union-attr]


def test_protocol_without_a_kind_drops_it(matrix_copy: Path) -> None:
    with (matrix_copy / "protocols.toml").open("a", encoding="utf-8") as f:
        f.write('\n[silent]\n[silent.play.video]\ncodecs = ["h264"]\n')
    m = load_matrix(matrix_copy)
    p = plan(m, {"video": Track("video", "h264"), "audio": Track("audio", "aac")}, "silent")
    assert p["video"] == PassThrough("video", "h264")
    assert p["audio"].__class__.__name__ == "Drop" and "silent" in str(p)
    assert "silent" in table(m)["rtmp"] and "silent" not in table(m)  # play-only: a column, no row


# --- locating the data ------------------------------------------------------------------------


def test_lookup_order(matrix_copy: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert find_matrix_dir() == MATRIX_DIR  # source checkout
    monkeypatch.setenv(ENV_VAR, str(matrix_copy))
    assert find_matrix_dir() == matrix_copy
    assert load_matrix().source == matrix_copy
    assert find_matrix_dir(MATRIX_DIR) == MATRIX_DIR  # explicit beats the environment
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(MatrixError, match=ENV_VAR):
        find_matrix_dir()
    with pytest.raises(MatrixError, match="does not exist"):
        load_matrix(tmp_path / "nowhere")


# --- invalid data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "header", "old", "new", "expect"),
    [
        ("protocols.toml", "[rtmp.play.audio]", '"aac"', '"opsu"', "rtmp.play.audio.codecs[0]: unknown codec 'opsu'"),
        ("protocols.toml", "[rtmp.play.audio]", "codecs", "negociated = true\ncodecs", "rtmp.play.audio.negociated: unknown key"),
        ("protocols.toml", "[rtmp.play.audio]", '"aac"', '"h264"', "rtmp.play.audio.codecs[0]: 'h264' is a video codec"),
        ("protocols.toml", "[webrtc.play.video.constraints.h264]", "b_frames = false", 'b_frames = "no"', "webrtc.play.video.constraints.h264.b_frames: b_frames must be bool, got 'no'"),
        ("protocols.toml", "[h5.play.video.constraints.mpeg1video]", "frame_rate", "framerate", "h5.play.video.constraints.mpeg1video.framerate: unknown track parameter"),
        ("protocols.toml", "[h5.play.video.constraints.mpeg1video]", "multiple_of = 2", "multiple_of = 0", "h5.play.video.constraints.mpeg1video.width.multiple_of"),
        ("protocols.toml", "[webrtc.publish.video]", 'typical = "h264"', 'typical = "mpeg1video"', "webrtc.publish.video.typical: 'mpeg1video' is not in codecs"),
        ("protocols.toml", "[rtmp]", "description =", "descriptoin =", "rtmp.descriptoin: unknown key"),
        ("protocols.toml", "[rtmp]", "description =", "description = = ", "invalid TOML"),
        ("codecs.toml", "[codecs.vp8]", 'kind = "video"', 'kind = "subtitle"', "codecs.vp8.kind: unknown kind 'subtitle'"),
        ("codecs.toml", "[codecs.aac.typical]", "channels = 2", "channels = 2.5", "codecs.aac.typical.channels: channels must be int, got 2.5"),
        ("transcodes.toml", "", 'to = "vp8"', 'to = "aac"', "'h264' is a video codec, not audio"),
        ("transcodes.toml", "[[transcode]]", 'from = ["h264", "vp8", "mpeg1video"]\n', "", "transcode[0].from: missing"),
        ("transcodes.toml", "[defaults.video]", '"frame_rate"', '"fps"', "defaults.video.inherit[2]: unknown track parameter 'fps'"),
        ("transcodes.toml", "", "cost = 2.8", 'cost = "high"', "cost: expected a number from 0 to 1000, got 'high'"),
        ("transcodes.toml", "", "cost = 2.8", "cost = -1", "cost: expected a number from 0 to 1000, got -1"),
    ],
)
def test_invalid_data_names_file_and_key(
    matrix_copy: Path, file: str, header: str, old: str, new: str, expect: str
) -> None:
    edit_after(matrix_copy / file, header, old, new)
    with pytest.raises(MatrixError) as e:
        load_matrix(matrix_copy)
    assert file in str(e.value)
    assert expect in str(e.value)


def test_duplicate_step_is_an_error(matrix_copy: Path) -> None:
    with (matrix_copy / "transcodes.toml").open("a", encoding="utf-8") as f:
        f.write('\n[[transcode]]\nfrom = "aac"\nto = "opus"\n')
    with pytest.raises(MatrixError, match=r"transcodes\.toml: .*step aac -> opus is listed twice"):
        load_matrix(matrix_copy)


def test_missing_file_is_an_error(matrix_copy: Path) -> None:
    (matrix_copy / "transcodes.toml").unlink()
    with pytest.raises(MatrixError, match=r"transcodes\.toml: missing matrix file"):
        load_matrix(matrix_copy)


def test_transcode_cost_is_the_steps_cost_scaled_by_the_output_pixel_rate(matrix, matrix_copy: Path) -> None:
    """What a plan counts against ``transcode_capacity``: the step's ``cost`` from
    transcodes.toml, for video times the output's pixel rate over 720p30's."""
    src = {"video": Track(kind="video", codec="h264", width=1920, height=1080, frame_rate=30.0),
           "audio": Track(kind="audio", codec="aac", sample_rate=44100, channels=2)}
    p = plan(matrix, src, "h5")  # the MPEG-1 step's max_pixels makes it 720p
    costs = {t.kind: transcode_cost(matrix, t) for t in p.transcodes}
    assert costs == {"video": pytest.approx(1.0), "audio": pytest.approx(0.02)}
    edit_after(matrix_copy / "transcodes.toml", 'to = "mpeg1video"', ", max_pixels = 921_600", "")
    p = plan(load_matrix(matrix_copy), src, "h5")
    assert transcode_cost(matrix, p["video"]) == pytest.approx(2.25)  # 1080p30 MPEG-1
    p = plan(matrix, src, "webrtc")  # H.264 passes (no B-frames said), AAC -> Opus
    assert {t.kind: transcode_cost(matrix, t) for t in p.transcodes} == {"audio": pytest.approx(0.08)}
    src["video"] = Track(kind="video", codec="vp8", width=640, height=360, frame_rate=30.0)
    p = plan(matrix, src, "rtmp")  # VP8 -> H.264 (libx264 costs 2.1 a 720p30)
    assert transcode_cost(matrix, p["video"]) == pytest.approx(2.1 / 4)
    # a step without a cost gets the kind's default
    edit_after(matrix_copy / "transcodes.toml", "", "cost = 2.1\n", "")
    assert transcode_cost(load_matrix(matrix_copy), p["video"]) == pytest.approx(1.0 / 4)
