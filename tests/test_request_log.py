"""Request ids: echoed in `x-request-id` and carried by every JSON log line of the request."""

from __future__ import annotations

import json
import logging

from fastapi.testclient import TestClient

from server.auth import KeyRing
from server.http.app import create_app
from server.request_log import JsonFormatter, request_id
from server.settings import Settings


def client() -> TestClient:
    return TestClient(create_app(Settings(), KeyRing({})))  # no `with`: no engine


def test_every_response_carries_a_request_id() -> None:
    first = client().get("/healthz").headers["x-request-id"]
    second = client().get("/readyz").headers["x-request-id"]
    assert len(first) == 32 and first != second


def test_a_sane_client_id_is_kept_and_an_odd_one_replaced() -> None:
    kept = client().get("/healthz", headers={"x-request-id": "app-42.retry:1"})
    assert kept.headers["x-request-id"] == "app-42.retry:1"
    odd = client().get("/healthz", headers={"x-request-id": "x" * 200})
    assert odd.headers["x-request-id"] != "x" * 200


def test_json_lines_name_the_request() -> None:
    record = logging.LogRecord("server.x", logging.INFO, __file__, 1, "served %s", ("a",), None)
    token = request_id.set("req-7")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert line["message"] == "served a" and line["request_id"] == "req-7"
    assert line["level"] == "INFO" and line["logger"] == "server.x" and "ts" in line
    assert "request_id" not in json.loads(JsonFormatter().format(record))
