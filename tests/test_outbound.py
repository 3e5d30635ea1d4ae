"""Outbound calls: the REST request Twilio gets, and clear errors when settings are missing."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from twilio.http import HttpClient
from twilio.http.response import Response

from engine.config_load import load_config
from engine.outbound import OutboundCallError, place_call

FULL = {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "secret", "TWILIO_FROM_NUMBER": "+15550001111",
        "ENGINE_TRANSPORT__PUBLIC_URL": "https://voice.example.test"}


class RecordingHttpClient(HttpClient):  # type: ignore[misc]
    """Stands in for Twilio's API: records the request, answers like Twilio does on success."""

    def __init__(self, status: int = 201) -> None:
        super().__init__(logging.getLogger("test.twilio"), is_async=False)
        self.requests: list[dict[str, Any]] = []
        self.status = status

    def request(self, method: str, uri: str, params: Any = None, data: Any = None, headers: Any = None,
                auth: Any = None, timeout: Any = None, allow_redirects: bool = False) -> Response:
        self.requests.append({"method": method, "uri": uri, "data": data, "auth": auth})
        if self.status >= 400:
            return Response(self.status, json.dumps({"code": 21211, "message": "Invalid 'To' Phone Number",
                                                     "status": self.status}))
        return Response(self.status, json.dumps({"sid": "CA" + "f" * 32, "status": "queued"}))


def test_places_the_call_pointing_twilio_at_our_webhook() -> None:
    http = RecordingHttpClient()
    sid = place_call(load_config(environ=FULL), "+15557654321", http_client=http)
    assert sid == "CA" + "f" * 32
    (req,) = http.requests
    assert req["method"] == "POST" and req["uri"].endswith(f"/Accounts/{FULL['TWILIO_ACCOUNT_SID']}/Calls.json")
    data = req["data"]
    assert data["To"] == "+15557654321" and data["From"] == "+15550001111"
    assert data["Url"] == "https://voice.example.test/twilio/voice"
    assert data["StatusCallback"] == "https://voice.example.test/twilio/status"
    assert req["auth"] == (FULL["TWILIO_ACCOUNT_SID"], "secret")
    # Answering-machine detection, asynchronous, its result posted (and signed) to our AMD callback.
    assert data["MachineDetection"] == "DetectMessageEnd" and data["AsyncAmd"] == "true"
    assert data["AsyncAmdStatusCallback"] == "https://voice.example.test/twilio/amd"
    assert data["AsyncAmdStatusCallbackMethod"] == "POST" and data["MachineDetectionTimeout"] == 30


def test_machine_detection_follows_the_config() -> None:
    http = RecordingHttpClient()
    place_call(load_config(environ={**FULL, "ENGINE_CONVERSATION__MACHINE_DETECTION_TIMEOUT_S": "12"}),
               "+15557654321", http_client=http)
    assert http.requests[0]["data"]["MachineDetectionTimeout"] == 12
    http = RecordingHttpClient()
    place_call(load_config(environ={**FULL, "ENGINE_CONVERSATION__MACHINE_DETECTION": "false"}), "+15557654321",
               http_client=http)
    (req,) = http.requests
    assert not any(key.startswith(("MachineDetection", "AsyncAmd")) for key in req["data"])


@pytest.mark.parametrize("drop", sorted(FULL))
def test_each_missing_setting_is_named(drop: str) -> None:
    env = {k: v for k, v in FULL.items() if k != drop}
    with pytest.raises(OutboundCallError, match=drop) as info:
        place_call(load_config(environ=env), "+15557654321", http_client=RecordingHttpClient())
    assert str(info.value).split("missing: ")[1].count(";") == 0  # only the one missing setting is named


def test_bad_number_and_twilio_refusal() -> None:
    with pytest.raises(OutboundCallError, match=r"not an E\.164 number"):
        place_call(load_config(environ=FULL), "5557654321")
    with pytest.raises(OutboundCallError, match="Twilio refused the call"):
        place_call(load_config(environ=FULL), "+15557654321", http_client=RecordingHttpClient(status=400))
