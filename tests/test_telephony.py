"""Stream tokens, TwiML and webhook signatures (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twilio.request_validator import RequestValidator

from engine.telephony import StreamTokens, connect_twiml, reject_twiml, signature_valid, stream_url

SECRET = b"0123456789abcdef0123456789abcdef"
AUTH = "auth-token-for-tests"
URL = "https://voice.example.test/twilio/voice"
PARAMS = {"CallSid": "CA1", "From": "+15550001111", "To": "+15550002222", "CallStatus": "ringing"}


def test_twiml_connects_the_call_to_our_stream_with_its_token() -> None:
    tokens = StreamTokens(SECRET, 300)
    xml = connect_twiml("https://voice.example.test", tokens.issue("CA1"))
    root = ET.fromstring(xml)
    stream = root.find("./Connect/Stream")
    assert root.tag == "Response" and stream is not None
    assert stream.get("url") == "wss://voice.example.test/twilio/stream"
    assert stream.get("statusCallback") == "https://voice.example.test/twilio/status"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert tokens.verify(params["token"], "CA1") is None  # type: ignore[arg-type]


def test_plain_http_public_url_gives_ws() -> None:
    assert stream_url("http://localhost:8080") == "ws://localhost:8080/twilio/stream"


def test_reject_twiml_says_and_hangs_up() -> None:
    root = ET.fromstring(reject_twiml("busy"))
    assert [child.tag for child in root] == ["Say", "Hangup"]


def test_tokens_bind_to_the_call_and_expire() -> None:
    tokens = StreamTokens(SECRET, 300)
    token = tokens.issue("CA1", now=1000.0)
    assert tokens.verify(token, "CA1", now=1200.0) is None
    assert tokens.verify(token, "CA2", now=1200.0) == "stream token belongs to another call"
    assert tokens.verify(token, "CA1", now=1301.0) == "stream token expired"
    sid, expiry, mac = token.split(".")
    assert tokens.verify(f"{sid}.{int(expiry) + 1000}.{mac}", "CA1", now=1200.0) == \
        "stream token signature does not verify"
    assert tokens.verify("garbage", "CA1") == "malformed stream token"
    assert tokens.verify(f"{sid}.²{expiry}.{mac}", "CA1") == "malformed stream token"  # isdigit(), yet not int()
    assert StreamTokens(b"another-secret-of-32-bytes......", 300).verify(token, "CA1", now=1200.0) is not None
    # Hostile shapes are refused, never raised: non-ASCII (compare_digest raises TypeError on it) and an expiry
    # past int()'s 4,300 digits (ValueError).
    assert tokens.verify(f"{sid}.{expiry}.{mac[:-1]}é", "CA1", now=1200.0) == "malformed stream token"
    assert tokens.verify(f"{sid}.{'9' * 5000}.{mac}", "CA1", now=1200.0) == "malformed stream token"


def test_a_token_opens_one_stream() -> None:
    tokens = StreamTokens(SECRET, 60)
    token = tokens.issue("CA1", now=1000.0)
    assert tokens.spend(token, "CA1", now=1001.0) is None
    assert tokens.spend(token, "CA1", now=1002.0) == "stream token already used"
    assert tokens.verify(token, "CA1", now=1002.0) == "stream token already used"
    other = tokens.issue("CA2", now=1000.0)
    assert tokens.spend(other, "CA2", now=1003.0) is None  # another call's token is its own
    # Once the spent token would have expired, the call is forgotten: memory stays bounded by the TTL.
    later = tokens.issue("CA3", now=1100.0)
    assert tokens.spend(later, "CA3", now=1101.0) is None
    assert sorted(tokens._spent) == ["CA3"]
    assert tokens.verify(token, "CA1", now=1101.0) == "stream token expired"


def test_signature_made_by_the_twilio_library_is_accepted() -> None:
    signature = RequestValidator(AUTH).compute_signature(URL, PARAMS)
    assert signature_valid(AUTH, URL, PARAMS, signature)


def test_tampered_requests_are_refused() -> None:
    signature = RequestValidator(AUTH).compute_signature(URL, PARAMS)
    assert not signature_valid(AUTH, URL, {**PARAMS, "From": "+15559999999"}, signature)
    assert not signature_valid(AUTH, URL.replace("voice", "status"), PARAMS, signature)
    assert not signature_valid("another-token", URL, PARAMS, signature)
    assert not signature_valid(AUTH, URL, PARAMS, None)
    assert not signature_valid("", URL, PARAMS, signature)
