"""The export path's hand-built text frames are byte-for-byte what websockets would send."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from quiesce.actors.websocket import _text_frame


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
