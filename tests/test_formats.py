"""pylfm.transcription.formats: timestamps, writers, parsers (round trips) and output
(the atomic writer itself: test_atomic.py)."""

import json
import os
import stat

import numpy as np
import pytest

from pylfm.transcription.formats import (
    Segment,
    format_timestamp,
    parse_srt,
    parse_timestamp,
    parse_vtt,
    to_json,
    to_srt,
    to_txt,
    to_vtt,
    write_output,
)

SEGS = [
    Segment(0, 0.0, 2.5, " Hello there."),
    Segment(1, 2.5, 3661.042, "Ünïcödé — and a second\nline"),
    Segment(2, 3661.5, 3700.0, "AT&T <says> a --> b"),
]


def test_format_timestamp():
    assert format_timestamp(0) == "00:00.000"
    assert format_timestamp(0, True, ",") == "00:00:00,000"
    assert format_timestamp(3661.5) == "01:01:01.500"
    assert format_timestamp(59.9996) == "01:00.000"  # rounds to the millisecond
    assert format_timestamp(1.0005 + 1e-9, decimal_marker=",") == "00:01,001"
    assert format_timestamp(360000.0, True) == "100:00:00.000"
    with pytest.raises(ValueError):
        format_timestamp(-0.5)


def test_parse_timestamp():
    assert parse_timestamp("01:01:01,500") == 3661.5
    assert parse_timestamp("01:02.5") == 62.5
    assert parse_timestamp("00:00:07") == 7.0
    for s in (0, 0.001, 59.999, 3599.999, 3661.042, 12345.678):
        assert parse_timestamp(format_timestamp(s)) == pytest.approx(s, abs=5e-4)
    with pytest.raises(ValueError, match="not a timestamp"):
        parse_timestamp("1.5s")


def test_srt_exact():
    assert to_srt(SEGS[:2]) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n00:00:02,500 --> 01:01:01,042\nÜnïcödé — and a second\nline\n"
    )


def test_vtt_exact_and_escaped():
    assert to_vtt([SEGS[0], SEGS[2]]) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "01:01:01.500 --> 01:01:40.000\nAT&amp;T &lt;says&gt; a --&gt; b\n"
    )


@pytest.mark.parametrize("write,parse", [(to_srt, parse_srt), (to_vtt, parse_vtt)])
def test_round_trip(write, parse):
    back = parse(write(SEGS))
    assert [(s.id, s.start, s.end, s.text) for s in back] == [
        (i, round(s.start, 3), round(s.end, 3), s.text.strip()) for i, s in enumerate(SEGS)
    ]


def test_blank_segments_and_blank_lines_are_not_cues():
    segs = [Segment(0, 0, 1, "a"), Segment(1, 1, 2, "  "), Segment(2, 2, 3, "b\n\n\nc")]
    srt = to_srt(segs)
    assert [s.text for s in parse_srt(srt)] == ["a", "b\nc"]
    assert srt.startswith("1\n") and "\n2\n" in srt and "\n3\n" not in srt
    assert len(parse_vtt(to_vtt(segs))) == 2
    assert to_srt([]) == "" and parse_srt("") == []
    assert parse_vtt(to_vtt([])) == []


def test_parse_srt_tolerates_real_files():
    text = "\ufeff1\r\n00:00:01,000 --> 00:00:02,000\r\nOne\r\n\r\n\r\n2\r\n00:00:03.5 --> 00:00:04,250\r\nTwo\r\n"
    segs = parse_srt(text)
    assert [(s.start, s.end, s.text) for s in segs] == [(1.0, 2.0, "One"), (3.5, 4.25, "Two")]
    with pytest.raises(ValueError, match="not an SRT cue"):
        parse_srt("1\nno timing here\ntext\n")


def test_parse_vtt_skips_metadata_and_markup():
    text = (
        "WEBVTT - a title\nKind: captions\n\n"
        "NOTE written by hand\nover two lines\n\n"
        "STYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.000 align:start position:10%\n<v Ann>Hi &amp; bye</v>\n\n"
        "00:00:03.000 --> 00:00:04.000\n<b>bold</b> text\n"
    )
    segs = parse_vtt(text)
    assert [(s.id, s.start, s.end, s.text) for s in segs] == [
        (0, 1.0, 2.0, "Hi & bye"), (1, 3.0, 4.0, "bold text")]
    with pytest.raises(ValueError, match="WEBVTT"):
        parse_vtt("00:01.000 --> 00:02.000\nhi\n")


def test_txt():
    assert to_txt("  hello world \n") == "hello world\n"
    assert to_txt("") == ""
    assert to_txt(SEGS[:2]) == "Hello there.\nÜnïcödé — and a second\nline\n"


def test_json():
    result = {"text": "hi", "language": None, "duration": np.float32(2.5),
              "segments": [Segment(0, 0.0, np.float64(2.5), "hi", [5, np.int64(7)])]}
    back = json.loads(to_json(result))
    assert back == {"text": "hi", "language": None, "duration": 2.5,
                    "segments": [{"id": 0, "start": 0.0, "end": 2.5, "text": "hi", "tokens": [5, 7],
                                  "stop_reason": "stop", "avg_logprob": None, "compression_ratio": None,
                                  "temperature": 0.0, "error": None}]}
    assert "Ü" in to_json({"t": "Ü"})  # UTF-8, not \\u escapes
    with pytest.raises(TypeError):
        to_json({"x": object()})


def test_write_output(tmp_path):
    path = tmp_path / "out.srt"
    write_output(path, to_srt(SEGS))
    assert parse_srt(path.read_text(encoding="utf-8"))[1].text == SEGS[1].text
    write_output(str(path), b"bytes\n")  # overwrite in place
    assert path.read_bytes() == b"bytes\n"
    assert sorted(os.listdir(tmp_path)) == ["out.srt"]  # no temp files left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_write_output_stdout(capsysbinary):
    write_output("-", "héllo\n")
    assert capsysbinary.readouterr().out == "héllo\n".encode()


def test_cue_text_keeps_unicode_separators_inside_a_line():
    seg = [Segment(0, 0.0, 1.0, "a\x1eb\u2028c")]
    assert [s.text for s in parse_srt(to_srt(seg))] == ["a\x1eb\u2028c"]
    assert [s.text for s in parse_vtt(to_vtt(seg))] == ["a\x1eb\u2028c"]
