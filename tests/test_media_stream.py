"""The Media Streams protocol core: every message Twilio may send, and every way a client can get it wrong."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from engine.media_stream import (
    CLOSE_INVALID,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    Audio,
    Dtmf,
    MarkEcho,
    MediaStreamSession,
    Reject,
    Started,
    Stopped,
    clear_message,
    mark_message,
    media_message,
)

SID = "MZ00000000000000000000000000000001"


def verify(params: dict[str, str], call_sid: str, account_sid: str) -> str | None:
    return None if params.get("token") == f"ok-{call_sid}" and account_sid == "AC1" else "bad token"


def start(seq: str = "1", **overrides: Any) -> str:
    info: dict[str, Any] = {"streamSid": SID, "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
                            "customParameters": {"token": "ok-CA1"},
                            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    info.update(overrides)
    return json.dumps({"event": "start", "sequenceNumber": seq, "start": info, "streamSid": SID})


def media(seq: int, payload: bytes = b"\xff" * 160, sid: str = SID) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": sid,
                       "media": {"track": "inbound", "chunk": str(seq - 1), "timestamp": str(20 * (seq - 2)),
                                 "payload": base64.b64encode(payload).decode()}})


CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def streaming() -> MediaStreamSession:
    s = MediaStreamSession(verify)
    assert s.receive(CONNECTED) is None
    assert isinstance(s.receive(start()), Started)
    return s


def test_a_whole_call() -> None:
    s = MediaStreamSession(verify)
    assert s.receive(CONNECTED) is None
    started = s.receive(start())
    assert started == Started(SID, "CA1", "AC1", {"token": "ok-CA1"})
    got = s.receive(media(2, b"\x01\x02"))
    assert got == Audio(b"\x01\x02", 0)
    assert s.receive(json.dumps({"event": "dtmf", "streamSid": SID, "sequenceNumber": "3",
                                 "dtmf": {"track": "inbound_track", "digit": "7"}})) == Dtmf("7")
    assert s.receive(json.dumps({"event": "mark", "streamSid": SID, "sequenceNumber": "4",
                                 "mark": {"name": "12"}})) == MarkEcho("12", 12)
    assert s.receive(json.dumps({"event": "stop", "streamSid": SID, "sequenceNumber": "5",
                                 "stop": {"accountSid": "AC1", "callSid": "CA1"}})) == Stopped()
    assert s.seq_gaps == 0
    assert isinstance(s.receive(media(6)), Reject)  # nothing after stop


def test_sequence_gaps_are_counted_not_fatal() -> None:
    s = streaming()
    for seq in (2, 3, 6, 7, 5):
        assert isinstance(s.receive(media(seq)), Audio)
    assert s.seq_gaps == 2 and s.seq_out_of_order == 1


def test_digits_that_are_not_ascii_are_not_numbers() -> None:
    # "²".isdigit() is True but int("²") raises: a crafted sequence number or timestamp must not crash the socket.
    s = streaming()
    odd = json.loads(media(2))
    odd["sequenceNumber"], odd["media"]["timestamp"] = "²", "١٢"
    event = s.receive(json.dumps(odd))
    assert isinstance(event, Audio) and event.timestamp_ms is None
    assert s.seq_gaps == 0 and s.seq_out_of_order == 0


def test_a_mark_whose_name_is_not_one_of_our_numbers_is_only_a_name() -> None:
    s = streaming()
    for seq, name in enumerate(["x1", "²", "9" * 5000, ""], start=2):  # 5,000 digits: int() would raise
        mark = json.dumps({"event": "mark", "streamSid": SID, "sequenceNumber": str(seq), "mark": {"name": name}})
        assert s.receive(mark) == MarkEcho(name, None)


@pytest.mark.parametrize(("messages", "code", "reason"), [
    (["{not json"], CLOSE_INVALID, "malformed JSON"),
    (['{"event": "bogus"}'], CLOSE_INVALID, "unknown or missing event type"),
    (['{"no_event": 1}'], CLOSE_INVALID, "unknown or missing event type"),
    (["[1, 2]"], CLOSE_INVALID, "invalid Media Streams message"),
    ([CONNECTED, media(2)], CLOSE_POLICY, "media before start"),
    ([CONNECTED, CONNECTED], CLOSE_POLICY, "connected sent twice"),
    ([CONNECTED, start(), start()], CLOSE_POLICY, "start sent twice"),
    ([CONNECTED, start(), media(2, sid="MZ-someone-else")], CLOSE_POLICY, "wrong streamSid"),
    ([CONNECTED, start(customParameters={})], CLOSE_POLICY, "bad token"),
    ([CONNECTED, start(customParameters={"token": "ok-CA2"})], CLOSE_POLICY, "bad token"),
    ([CONNECTED, start(mediaFormat={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})],
     CLOSE_INVALID, "only audio/x-mulaw 8000 Hz mono"),
    ([CONNECTED, start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2})],
     CLOSE_INVALID, "only audio/x-mulaw"),
    ([CONNECTED, start(streamSid="")], CLOSE_INVALID, "without streamSid"),
    ([CONNECTED, start(), media(2).replace('"payload": "', '"payload": "!!')], CLOSE_INVALID, "not base64"),
    ([CONNECTED, start(), media(2, b"\xff" * 9000)], CLOSE_TOO_BIG, "too large"),
    ([CONNECTED, start(), json.dumps({"event": "media", "streamSid": SID, "media": {"payload": 5}})],
     CLOSE_INVALID, "Expected `str`"),
    ([CONNECTED, start(), json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "x"}})],
     CLOSE_INVALID, "invalid DTMF digit"),
    ([CONNECTED, start(accountSid="AC2")], CLOSE_POLICY, "bad token"),
    # Hostile shapes the decoder or int() would raise on: rejected like any bad message, never raised.
    ([CONNECTED, '{"event": "connected", "x": ' + "[" * 1000 + "]" * 1000 + "}"], CLOSE_INVALID, "nested too deep"),
    (["[" * 100_000 + "]" * 100_000], CLOSE_INVALID, "invalid Media Streams message"),
    ([CONNECTED, start(seq="9" * 5000)], CLOSE_INVALID, "sequenceNumber is not a number Twilio sends"),
    ([CONNECTED, start(), media(2).replace('"timestamp": "0"', '"timestamp": "' + "1" * 4400 + '"')],
     CLOSE_INVALID, "timestamp is not a number"),
    ([CONNECTED, start(), media(2).replace('"chunk": "1"', '"chunk": "' + "1" * 30 + '"')],
     CLOSE_INVALID, "chunk is not a number"),
])
def test_bad_input_is_rejected_with_a_clear_reason(messages: list[str], code: int, reason: str) -> None:
    s = MediaStreamSession(verify)
    results = [s.receive(m) for m in messages]
    last = results[-1]
    assert isinstance(last, Reject), results
    assert last.code == code and reason in last.reason
    assert len(last.reason.encode()) <= 123  # fits a WebSocket close frame
    assert all(not isinstance(r, Reject) for r in results[:-1])


def test_binary_frames_are_refused() -> None:
    assert streaming().receive_binary().code == CLOSE_UNSUPPORTED


def test_outbound_messages() -> None:
    assert json.loads(media_message(SID, b"\x00\xff")) == {"event": "media", "streamSid": SID,
                                                           "media": {"payload": "AP8="}}
    assert json.loads(mark_message(SID, "7")) == {"event": "mark", "streamSid": SID, "mark": {"name": "7"}}
    assert json.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}
