"""Server-sent events: framing a byte stream into whole events, the [DONE] marker, usage (and malformed
events) and error events."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from router.transport.sse import DONE, MalformedEvent, SSEFramer, error_event, is_done, usage_of

CHUNK = b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}\n\n'
USAGE = (
    b'data: {"id":"chatcmpl-1","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
)
EVENTS = [CHUNK, USAGE, DONE]
STREAM = b"".join(EVENTS)


def frame(*chunks: bytes) -> tuple[list[bytes], bytes]:
    """Feed ``chunks`` to a fresh framer: the events it yields and the bytes it still holds."""
    framer = SSEFramer()
    events = [event for chunk in chunks for event in framer.feed(chunk)]
    return events, framer.pending


class TestFramer:
    def test_whole_stream_in_one_chunk(self) -> None:
        """One chunk holding three events yields the three events, terminators included."""
        assert frame(STREAM) == (EVENTS, b"")

    def test_every_single_split_point(self) -> None:
        """Cut anywhere (including before the first and after the last byte), the same events come out."""
        for i in range(len(STREAM) + 1):
            assert frame(STREAM[:i], STREAM[i:]) == (EVENTS, b""), i

    def test_every_pair_of_split_points(self) -> None:
        """Cut in three pieces at any two points, the same events come out."""
        for i, j in combinations(range(len(STREAM) + 1), 2):
            assert frame(STREAM[:i], STREAM[i:j], STREAM[j:]) == (EVENTS, b""), (i, j)

    def test_one_byte_at_a_time(self) -> None:
        """Fed byte by byte, each event appears exactly when its last byte arrives."""
        framer = SSEFramer()
        ends = []
        out: list[bytes] = []
        for index in range(len(STREAM)):
            events = framer.feed(STREAM[index : index + 1])
            if events:
                ends.append(index + 1)
                out += events
        assert out == EVENTS
        assert ends == [len(CHUNK), len(CHUNK) + len(USAGE), len(STREAM)]

    @pytest.mark.parametrize(
        ("stream", "events"),
        [
            pytest.param(
                b"data: a\r\n\r\ndata: b\r\n\r\n", [b"data: a\r\n\r\n", b"data: b\r\n\r\n"], id="crlf"
            ),
            pytest.param(
                b"data: a\n\ndata: b\r\n\r\n", [b"data: a\n\n", b"data: b\r\n\r\n"], id="lf-then-crlf"
            ),
            pytest.param(
                b"data: a\r\n\r\ndata: b\n\n", [b"data: a\r\n\r\n", b"data: b\n\n"], id="crlf-then-lf"
            ),
            pytest.param(
                b"event: message\nid: 7\ndata: a\ndata: b\n\n",
                [b"event: message\nid: 7\ndata: a\ndata: b\n\n"],
                id="multi-line-event",
            ),
            pytest.param(b": keep-alive\n\ndata: a\n\n", [b": keep-alive\n\n", b"data: a\n\n"], id="comment"),
            pytest.param(b"\n\n", [b"\n\n"], id="empty-event"),
        ],
    )
    def test_line_endings_and_event_shapes(self, stream: bytes, events: list[bytes]) -> None:
        """CRLF and LF events, mixed, multi-line and comment events are framed whole, at every split."""
        for i in range(len(stream) + 1):
            assert frame(stream[:i], stream[i:]) == (events, b""), i

    def test_pending_holds_an_unterminated_event(self) -> None:
        """Bytes of an event without its blank line stay pending until the terminator arrives."""
        framer = SSEFramer()
        assert framer.pending == b""
        assert framer.feed(b"data: partial") == []
        assert framer.pending == b"data: partial"
        assert framer.feed(b"\n") == []
        assert framer.pending == b"data: partial\n"
        assert framer.feed(b"\ndata: next") == [b"data: partial\n\n"]
        assert framer.pending == b"data: next"

    def test_empty_chunks_change_nothing(self) -> None:
        """Feeding b"" yields no event and keeps what is pending."""
        framer = SSEFramer()
        assert framer.feed(b"") == []
        framer.feed(b"data: x")
        assert framer.feed(b"") == []
        assert framer.pending == b"data: x"

    def test_a_stream_cut_mid_event_leaves_it_pending(self) -> None:
        """A provider that drops mid-event never yields half an event: the rest stays pending."""
        cut = len(CHUNK) + 20
        assert frame(STREAM[:cut]) == ([CHUNK], STREAM[len(CHUNK) : cut])


class TestIsDone:
    @pytest.mark.parametrize(
        ("event", "done"),
        [
            (DONE, True),
            (b"data:[DONE]\n\n", True),
            (b"data: [DONE]\r\n\r\n", True),
            (CHUNK, False),
            (b'data: {"content":"[DONE]"}\n\n', False),
            (b": [DONE]\n\n", False),
            (b"event: done\n\n", False),
            (b"", False),
        ],
    )
    def test_done_marker(self, event: bytes, done: bool) -> None:
        """Only a ``data: [DONE]`` event (with or without the space) ends the stream."""
        assert is_done(event) is done

    def test_done_constant_is_one_whole_event(self) -> None:
        """DONE is exactly one framed event."""
        assert frame(DONE) == ([DONE], b"")


class TestUsageOf:
    @pytest.mark.parametrize(
        ("event", "usage"),
        [
            pytest.param(USAGE, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, id="final"),
            pytest.param(b'data:{"usage":{"total_tokens":1}}\n\n', {"total_tokens": 1}, id="no-space"),
            pytest.param(b'data: {"usage":{"total_tokens":1}}\r\n\r\n', {"total_tokens": 1}, id="crlf"),
            pytest.param(
                b'event: message\ndata: {"usage":{"total_tokens":1}}\n\n',
                {"total_tokens": 1},
                id="event-line",
            ),
            pytest.param(CHUNK, None, id="usage-null"),
            pytest.param(b'data: {"choices":[],"usage":{}}\n\n', None, id="usage-empty"),
            pytest.param(b'data: {"choices":[]}\n\n', None, id="no-usage"),
            pytest.param(b'data: {"usage":[1,2]}\n\n', None, id="usage-list"),
            pytest.param(b': "usage" in a comment\n\n', None, id="comment"),
            pytest.param(b"\n\n", None, id="blank"),
            pytest.param(b"event: ping\n\n", None, id="no-data"),
            pytest.param(DONE, None, id="done"),
            pytest.param(b"data:[DONE]\n\n", None, id="done-no-space"),
            pytest.param(
                b'data: {"usage":\ndata: {"total_tokens":1}}\n\n', {"total_tokens": 1}, id="two-data-lines"
            ),
        ],
    )
    def test_usage_of_one_event(self, event: bytes, usage: dict[str, int] | None) -> None:
        """Only a chunk whose ``usage`` is a non-empty object carries usage; the values of several
        ``data:`` lines are one piece of data, joined by a newline (the SSE rule)."""
        assert usage_of(event) == usage

    @pytest.mark.parametrize(
        ("event", "reason"),
        [
            pytest.param(b'data: {"usage": {"total_tokens": \n\n', "its data is not JSON", id="truncated"),
            pytest.param(b"data: {not json\n\n", "its data is not JSON", id="not-json"),
            pytest.param(b"data: \xff\xfe\n\n", "its data is not JSON", id="not-utf8"),
            pytest.param(b"data: \n\n", "its data is not JSON", id="empty-data"),
            pytest.param(b'data: ["usage"]\n\n', "its data is not a JSON object", id="json-list"),
            pytest.param(b"data: 42\n\n", "its data is not a JSON object", id="json-number"),
            pytest.param(
                b"data: " + b"[" * 100_000 + b"\n\n", "its data is not JSON", id="nested-too-deeply"
            ),
            pytest.param(b'data: {"a":1}\ndata: {"b":2}\n\n', "its data is not JSON", id="two-objects"),
        ],
    )
    def test_data_that_is_not_a_json_object_is_malformed(self, event: bytes, reason: str) -> None:
        """An event whose data is anything but a JSON object raises MalformedEvent, saying which."""
        with pytest.raises(MalformedEvent, match=f"^{reason}$"):
            usage_of(event)

    def test_the_final_usage_chunk_of_a_stream_wins(self) -> None:
        """In a stream whose chunks carry ``"usage":null`` but the last, only the final usage is found."""
        events, _ = frame(CHUNK, CHUNK, USAGE, DONE)
        found = [usage for usage in map(usage_of, events) if usage is not None]
        assert found == [{"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}]


class TestErrorEvent:
    @pytest.mark.parametrize(
        "message",
        ["provider went away", 'quote " and\nnewline', "unicode: 0G ✓"],
    )
    def test_is_one_event_of_openai_error_json(self, message: str) -> None:
        """The error event is a single ``data:`` line of OpenAI-shaped error JSON, framed as one event."""
        event = error_event(message, "provider_disconnected")
        assert event.startswith(b"data: ")
        assert event.endswith(b"\n\n")
        assert event.count(b"\n") == 2
        assert frame(event) == ([event], b"")
        assert not is_done(event)
        assert usage_of(event) is None
        assert json.loads(event[len(b"data: ") :]) == {
            "error": {
                "message": message,
                "type": "provider_error",
                "code": "provider_disconnected",
                "param": None,
            }
        }
