"""Server frames: the export path's hand-built text frames are byte-for-byte what websockets
would send, and every error frame is strict JSON."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from quiesce.actors.websocket import _text_frame
from quiesce.core.protocol import ErrorCode, error_frame


@given(st.binary(max_size=70_000))
def test_text_frame_matches_websockets_serialisation(payload: bytes) -> None:
    """Any payload gives the same bytes as websockets' own unmasked text frame."""
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert _text_frame(payload) == expected


def test_text_frame_length_encodings_at_their_boundaries() -> None:
    """Lengths 125, 126, 65535 and 65536 switch between 7-bit, 16-bit and 64-bit encodings."""
    for length in (0, 125, 126, 65535, 65536):
        payload = b"x" * length
        assert _text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(
            mask=False, extensions=[]
        )


@given(st.text(st.characters(exclude_categories=()) | st.sampled_from("\ud800\udfff")),
       st.none() | st.integers(min_value=1))
def test_every_error_frame_is_strict_json(detail: str, seq: int | None) -> None:
    """An error frame parses under orjson whatever its detail holds (lone surrogates too)."""
    frame = orjson.loads(error_frame(ErrorCode.INVALID_MESSAGE, detail, seq))
    shown = frame["error"]["detail"]
    assert shown == detail.encode("utf-8", "backslashreplace").decode("utf-8")


def test_a_lone_surrogate_in_a_detail_is_spelled_out() -> None:
    """A lone surrogate in a detail reaches the client as the text \\ud800."""
    frame = orjson.loads(error_frame(ErrorCode.INVALID_MESSAGE, "bad \ud800"))
    assert frame["error"]["detail"] == "bad \\ud800"
