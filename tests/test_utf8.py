"""The engine's byte -> text rule (``take_utf8`` in src/native/common.cpp, exposed as
``pylfm._core.sanitize_utf8``) against Python's own ``bytes.decode("utf-8", "replace")``.

Token pieces are bytes, and a model may emit any of them: a character split across two
tokens, a stray continuation byte, an overlong or surrogate form. Whatever it emits, the
transcript must be valid UTF-8 and place U+FFFD exactly where Python (and the Unicode
"maximal subpart" practice) does, so that streamed text equals the text decoded whole.
"""

from __future__ import annotations

import random

import pytest

from pylfm import _core

R = "\ufffd"

# (name, bytes, the text Python's decoder gives): every row is also checked against
# bytes.decode itself, so the table cannot drift from Python's semantics.
TABLE = [
    ("ascii", b"abc", "abc"),
    ("overlong C0 80", b"\xc0\x80", R * 2),
    ("overlong C1 BF", b"\xc1\xbf", R * 2),
    ("overlong E0 80 80", b"\xe0\x80\x80", R * 3),
    ("surrogate ED A0 80", b"\xed\xa0\x80", R * 3),
    ("above U+10FFFF: F4 90 80 80", b"\xf4\x90\x80\x80", R * 4),
    ("lone continuation", b"a\x80b", f"a{R}b"),
    ("continuations only", b"\x80\xbf\x9f", R * 3),
    ("lead without continuation", b"\xe2\x82a", f"{R}a"),
    ("two-byte é", "é".encode(), "é"),
    ("three-byte €", "€".encode(), "€"),
    ("four-byte 😀", "😀".encode(), "😀"),
    ("highest code point U+10FFFF", b"\xf4\x8f\xbf\xbf", "\U0010ffff"),
    ("last before surrogates U+D7FF", b"\xed\x9f\xbf", "\ud7ff"),
    ("mixed", b"x\xc3\xa9\xff\xe2\x82\xac\xed\xb0\x80y", f"xé{R}€{R * 3}y"),
] + [(f"lead {b:02X}", bytes([b, 0x80, 0x80, 0x80]), R * 4) for b in range(0xF5, 0x100)]


@pytest.mark.parametrize("flush", [True, False])
@pytest.mark.parametrize("name,data,text", TABLE, ids=[row[0] for row in TABLE])
def test_table_matches_python(name, data, text, flush):
    assert data.decode("utf-8", "replace") == text  # the table states Python's behaviour
    # Each row ends in a complete character or in bytes no continuation can repair, so
    # nothing is held back even without flush.
    assert _core.sanitize_utf8(data, flush) == (text, b"")


@pytest.mark.parametrize("data", [b"\xe2\x82", b"\xc3", b"\xf0\x9f", b"\xf0\x9f\x98", b"\xed\x9f", b"\xf4\x8f\xbf"],
                         ids=lambda d: d.hex(" ").upper())
def test_unfinished_character_is_held_back_then_replaced_on_flush(data):
    assert _core.sanitize_utf8(b"ab" + data, False) == ("ab", data)
    assert _core.sanitize_utf8(b"ab" + data, True) == ("ab" + R, b"")
    assert (b"ab" + data).decode("utf-8", "replace") == "ab" + R


@pytest.mark.parametrize("data", [b"\xed\xa0", b"\xf4\x90", b"\xe0\x80", b"\xf0\x80", b"\xc0", b"\xf5"],
                         ids=lambda d: d.hex(" ").upper())
def test_bytes_no_continuation_can_repair_are_not_held_back(data):
    """A truncated prefix that is already invalid (surrogate, > U+10FFFF, overlong) is
    replaced at once: waiting for more bytes could never make it a character."""
    text, pending = _core.sanitize_utf8(data, False)
    assert pending == b""
    assert text == data.decode("utf-8", "replace") and set(text) == {R}


def test_character_split_across_calls():
    euro, emoji = "€".encode(), "😀".encode()
    text1, pending = _core.sanitize_utf8(b"price " + euro[:2], False)
    assert (text1, pending) == ("price ", euro[:2])
    text2, pending = _core.sanitize_utf8(pending + euro[2:] + b" " + emoji[:1], False)
    assert (text2, pending) == ("€ ", emoji[:1])
    text3, pending = _core.sanitize_utf8(pending + emoji[1:3], False)
    assert (text3, pending) == ("", emoji[:3])
    text4, pending = _core.sanitize_utf8(pending + emoji[3:], True)
    assert (text4, pending) == ("😀", b"")
    assert text1 + text2 + text3 + text4 == "price € 😀"
    # the continuation never comes: the held-back bytes become one U+FFFD on flush
    _, pending = _core.sanitize_utf8(euro[:2], False)
    assert _core.sanitize_utf8(pending + b"!", True) == (R + "!", b"")


_PIECES = [b"a", b" ", "é".encode(), "€".encode(), "😀".encode(), "\U0010ffff".encode(), b"\xc0", b"\xc1",
           b"\xc2", b"\xe0", b"\xe2\x82", b"\xed", b"\xf0", b"\xf0\x9f\x98", b"\xf4", b"\xf5", b"\xff", b"\x80",
           b"\x8f", b"\x90", b"\x9f", b"\xa0", b"\xbf"]


def _random_bytes(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # uniform bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 32)))
    # lead and continuation bytes and characters mixed: near-misses are frequent
    return b"".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 16)))


def test_random_streams_equal_python_decoding_the_whole():
    rng = random.Random(20240607)
    for _ in range(2000):
        data = _random_bytes(rng)
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(0, 6))))
        chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        out, pending = [], b""
        for i, chunk in enumerate(chunks):
            fed = pending + chunk
            text, pending = _core.sanitize_utf8(fed, i == len(chunks) - 1)
            consumed = fed[: len(fed) - len(pending)]
            assert fed.endswith(pending) and len(pending) < 4, (data, chunks)
            # each call's text is Python's decoding of exactly the bytes it consumed
            assert text == consumed.decode("utf-8", "replace"), (data, chunks, i)
            if pending:  # only the start of a character that may still complete
                with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
                    pending.decode("utf-8")
            text.encode("utf-8")  # valid UTF-8: no lone surrogates
            out.append(text)
        assert pending == b"", (data, chunks)
        assert "".join(out) == data.decode("utf-8", "replace"), (data, chunks)
