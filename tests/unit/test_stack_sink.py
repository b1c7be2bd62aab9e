"""The embedded and compose webhook sink: verifies signatures, counts redeliveries, and keeps a
bounded window (compose runs it as long as the stack)."""

from __future__ import annotations

import base64

import orjson
import pytest
from fastapi.testclient import TestClient

from shared.stack import sink
from shared.webhooks import sign_headers

SECRET = "whsec_" + base64.b64encode(b"sink-secret-sink-secret!").decode()


def post(client: TestClient, webhook_id: str, secret: str = SECRET) -> int:
    body = orjson.dumps({"id": webhook_id})
    headers = sign_headers([secret], webhook_id, body)
    return client.post("/hooks/email", content=body, headers=headers).status_code


def test_the_sink_keeps_a_bounded_window_and_counts_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sink, "KEPT_DELIVERIES", 3)
    client = TestClient(sink.create_app(SECRET))
    for n in range(5):
        assert post(client, f"m{n}") == 200
    assert post(client, "m4") == 200  # a redelivery
    other = "whsec_" + base64.b64encode(b"x" * 24).decode()
    assert post(client, "forged", other) == 401
    listing = client.get("/deliveries").json()
    assert (listing["total"], listing["unique"]) == (6, 5)
    kept = [(d["webhook_id"], d["attempt"]) for d in listing["deliveries"]]
    assert kept == [("m3", 1), ("m4", 1), ("m4", 2)]
    assert client.get("/deliveries", params={"limit": 1}).json()["deliveries"][0]["attempt"] == 2
