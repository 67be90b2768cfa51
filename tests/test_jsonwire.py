"""router.jsonwire.loads gives what json.loads gives, value or error: orjson only where they agree."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import jsonwire

EDGES = [
    b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
    b"12345678901234567890",  # 20 digits, inside orjson's unsigned range
    b"123456789012345678901234567890",  # orjson would make this a float
    b'{"max_tokens": -9223372036854775809}',  # just past the signed range
    b"1e400",  # infinity: json reads it, orjson refuses
    b"[NaN, Infinity, -Infinity]",
    b'"\\ud800"',  # a lone surrogate
    '{"a": "é"}'.encode("utf-16"),  # json detects UTF-16
    b'{"a": 1, "a": 2}',  # the last duplicate wins in both
    b"[" * 3000 + b"]" * 3000,  # deeper than either parser goes
    b"",
    b"{",
    b'{"a": 1} trailing',
    b"\xff\xfe\x00",
]


def outcome(parse: object, data: bytes) -> tuple[str, object]:
    try:
        value = parse(data)  # type: ignore[operator]
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)
    return "value", repr(value)


@pytest.mark.parametrize("data", EDGES)
def test_edges_parse_as_json_parses_them(data: bytes) -> None:
    assert outcome(jsonwire.loads, data) == outcome(json.loads, data)


def test_long_integers_stay_exact() -> None:
    assert jsonwire.loads(b'{"n": 123456789012345678901234567890}') == {"n": 123456789012345678901234567890}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_any_json_document_parses_as_json_parses_it(value: object) -> None:
    data = json.dumps(value).encode()
    assert outcome(jsonwire.loads, data) == outcome(json.loads, data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_parse_or_fail_as_json_does(data: bytes) -> None:
    assert outcome(jsonwire.loads, data) == outcome(json.loads, data)
