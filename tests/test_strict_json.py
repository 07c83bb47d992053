"""Tests of core.wire.loads_strict: only strict JSON is accepted, and a refusal names why."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pulsar
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect

from quiesce.core import wire
from quiesce.core.errors import InvalidMessage
from quiesce.core.wire import MAX_DEPTH, loads_strict, validate
from quiesce.supervisor import Supervisor
from tests.data import sample_message
from tests.harness import from_payload, publish, to_payload, topic_of, ws_url

# Bound of the export's wait (generous: it only matters when something is wrong).
LONG = 30.0


def exact(detail: str) -> str:
    """A `pytest.raises` match pattern for exactly ``detail``."""
    return f"^{re.escape(detail)}$"


TRIPLES = json.dumps(sample_message("triples"))


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (TRIPLES.replace('"triples": [', '"triples": "x", "triples": ['),
         "duplicate key 'triples'"),
        (TRIPLES.replace('"user": "trustgraph"', '"user": "a", "user": "trustgraph"'),
         "metadata: duplicate key 'user'"),
        (TRIPLES.replace('"v": "Alpha 0", "e": false', '"v": "Alpha 0", "e": false, "v": "B"'),
         "triples[1].o: duplicate key 'v'"),
        (TRIPLES.replace('"Alpha 0"', '"\\ud800"'), "triples[1].o.v: lone surrogate \\ud800"),
        (TRIPLES.replace('"Alpha 0"', '"x\\udfffy"'), "triples[1].o.v: lone surrogate \\udfff"),
        (TRIPLES.replace('"Alpha 0"', '"\\ude00\\ud83d"'),
         "triples[1].o.v: lone surrogate \\ude00"),
        (TRIPLES.replace('"user":', '"\\ud800user":'),
         "metadata: lone surrogate \\ud800 in key '\\ud800user'"),
        (TRIPLES.replace('"Alpha 0"', "NaN"), "triples[1].o.v: NaN is not JSON"),
        (TRIPLES.replace('"Alpha 0"', "-Infinity"), "triples[1].o.v: -Infinity is not JSON"),
        ("NaN", "NaN is not JSON"),
        ('{"a": [1, Infinity]}', "a[1]: Infinity is not JSON"),
    ],
)
def test_frames_that_are_not_strict_json_are_refused_naming_the_problem(
    text: str, detail: str
) -> None:
    """Duplicate keys, lone surrogates and NaN/Infinity are refused at their path."""
    with pytest.raises(InvalidMessage, match=exact(detail)) as info:
        validate("triples", text)
    assert info.value.code == "invalid-message"


def test_the_first_problem_in_document_order_is_named() -> None:
    """With a duplicate key before a NaN, the duplicate is named, and the other way round."""
    assert_detail('{"a": 1, "a": 2, "b": NaN}', "duplicate key 'a'")
    assert_detail('{"b": NaN, "a": 1, "a": 2}', "b: NaN is not JSON")


def assert_detail(text: str, detail: str) -> None:
    """``loads_strict(text)`` refuses with exactly ``detail``."""
    with pytest.raises(InvalidMessage, match=exact(detail)):
        loads_strict(text)


def test_a_duplicate_key_hidden_by_an_escaped_colon_is_found() -> None:
    """A colon written as \\u003a cannot hide a duplicate from the colon count."""
    assert_detail('{"a\\u003a": 1, "a:": 2}', "duplicate key 'a:'")
    assert loads_strict('{"a\\u003a": 1, "b:": 2}') == {"a:": 1, "b:": 2}


def test_paired_surrogates_and_colons_in_strings_are_fine() -> None:
    """An escaped surrogate pair is one character, and colons inside strings are no members."""
    assert loads_strict('{"k": "\\ud83d\\ude00", "u": "http://x:1/a:b"}') == {
        "k": "\U0001f600", "u": "http://x:1/a:b"}


def test_a_long_duplicate_key_is_shortened_in_the_detail() -> None:
    """A duplicate key of 10,000 characters is quoted in at most 40."""
    key = "k" * 10_000
    assert_detail(json.dumps({"x": 1})[:-1] + f', "{key}": 1, "{key}": 2}}',
                  f"duplicate key '{'k' * 37}...'")


def test_the_depth_bound_is_orjsons_own() -> None:
    """MAX_DEPTH nested arrays serialise with orjson again; one more does not."""
    deep = orjson.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    orjson.dumps(deep)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps([deep])


# --------------------------------------------------------------------------------------------
# Properties: agreement with orjson, and every duplicate found
# --------------------------------------------------------------------------------------------

keys = st.text(max_size=4)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                 allow_infinity=False) | keys
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


def write(value: Any, dup: list[int], spaced: bool) -> str:
    """``value`` as JSON text; the object numbered ``dup[0]`` (counting down) repeats a key."""
    colon, comma = (": ", ", ") if spaced else (":", ",")
    if isinstance(value, dict):
        members = [f"{json.dumps(k)}{colon}{write(v, dup, spaced)}" for k, v in value.items()]
        dup[0] -= 1
        if dup[0] == 0 and value:
            first = next(iter(value))
            members.append(f"{json.dumps(first)}{colon}{write(value[first], [0], spaced)}")
        return "{" + comma.join(members) + "}"
    if isinstance(value, list):
        return "[" + comma.join(write(v, dup, spaced) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=400, deadline=None)
@given(json_values, st.booleans())
def test_whatever_strict_json_is_accepted_parses_the_same_under_orjson(
    value: Any, spaced: bool
) -> None:
    """Strict JSON is accepted, and gives what orjson gives."""
    text = write(value, [0], spaced)
    assert loads_strict(text) == orjson.loads(text)


@settings(max_examples=400, deadline=None)
@given(json_values, st.integers(min_value=1, max_value=10), st.booleans())
def test_a_duplicate_key_at_any_depth_is_refused(value: Any, which: int, spaced: bool) -> None:
    """Repeating a key of any one non-empty object anywhere in the value is refused."""
    dup = [which]
    text = write(value, dup, spaced)
    if dup[0] > 0 or text == write(value, [0], spaced):
        return  # fewer objects than `which`, or that one was empty: nothing repeated
    with pytest.raises(InvalidMessage, match=r"duplicate key '"):
        loads_strict(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}[]",:0123456789.eE+-\\untrfalsNIfy '), max_size=40))
def test_arbitrary_text_is_refused_only_with_invalid_message(text: str) -> None:
    """Any text either parses to orjson's value or is refused with InvalidMessage, never more."""
    try:
        value = loads_strict(text)
    except InvalidMessage as exc:
        assert exc.detail and "\n" not in exc.detail
        return
    assert value == orjson.loads(text)


def test_the_fast_check_flags_nothing_on_a_valid_frame() -> None:
    """A valid frame written by json.dumps or orjson never takes the slow half."""
    msg = sample_message("triples", 3)
    for text in (json.dumps(msg), orjson.dumps(msg).decode(), json.dumps(msg, indent=2)):
        assert not wire._maybe_duplicates(text, orjson.loads(text))


# ------------------------------------------------ strict JSON out: what exports write


async def test_every_export_frame_is_strict_json_whatever_the_topic_holds(
    gateway: Supervisor, pulsar_client: pulsar.Client, flow: str
) -> None:
    """Payloads another producer wrote with NaN, a lone surrogate or a duplicate key go out
    as strict JSON: an ``invalid-payload`` frame, or the message with each key once.

    Every frame the gateway writes parses under `loads_strict` and orjson; the good
    payloads arrive as themselves; nothing is skipped (as many frames as payloads, then
    ``{"end": true}``).
    """
    topic = topic_of("triples", flow)
    good = to_payload(topic, sample_message("triples", 1))
    text = good.decode()
    assert '"Alpha 1"' in text  # the literal the hostile variants replace
    hostile = {
        "nan": text.replace('"Alpha 1"', "NaN", 1).encode(),
        "infinity": text.replace('"Alpha 1"', "-Infinity", 1).encode(),
        "surrogate": text.replace('"Alpha 1"', '"\\ud800"', 1).encode(),
        "invalid-utf8": text.replace('"Alpha 1"', '"\xff"', 1).encode("latin-1"),
        "duplicate-key": text.replace('{"metadata"', '{"metadata": null, "metadata"', 1
                                      ).encode(),
    }
    payloads = [good, *hostile.values(), good]
    await trio.to_thread.run_sync(publish, pulsar_client, topic, payloads)
    path = f"/api/v1/flow/{flow}/export/triples?position=earliest&until=end"
    raw: list[str | bytes] = []
    with trio.fail_after(LONG):
        async with connect(ws_url(gateway, path)) as ws:
            try:
                while True:
                    raw.append(await ws.recv())
            except ConnectionClosed:
                pass
    frames = [loads_strict(frame) for frame in raw]  # raises on anything not strict
    for frame in raw:
        orjson.loads(frame)
    invalid = [f for f in frames if "error" in f]
    messages = [f for f in frames if "metadata" in f]
    print(f"\nstrict out: published {len(payloads)} ({len(hostile)} hostile), frames "
          f"{len(frames)}: {len(messages)} messages, {len(invalid)} invalid-payload, "
          f"end {frames[-1]}, close {ws.close_code}")
    assert frames[-1] == {"end": True} and ws.close_code == 1000
    assert len(frames) == len(payloads) + 1  # each payload once, nothing skipped
    assert all(f["error"]["code"] == "invalid-payload" for f in invalid)
    assert len(invalid) >= 4  # NaN, Infinity, the surrogate and the bad UTF-8 at least
    assert messages.count(from_payload(topic, good)) >= 2
