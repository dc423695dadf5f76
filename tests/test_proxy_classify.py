"""UpstreamError: the provider's answer as the proxy received it, classified like the SDKs'."""

from __future__ import annotations

from agentguard.classify import Kind, UpstreamError, describe


def test_a_529_answer_is_an_overload_with_its_headers_read() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    headers = {"Retry-After": "3", "x-should-retry": "false", "request-id": "req_1"}
    failure = describe(UpstreamError(529, headers, body))
    assert failure is not None
    assert (failure.kind, failure.status_code, failure.error_type) == (
        Kind.OVERLOADED,
        529,
        "overloaded_error",
    )
    assert (failure.retry_after, failure.should_retry, failure.request_id) == (3.0, False, "req_1")
    assert failure.message == "Overloaded"


def test_an_sse_error_event_before_content_has_no_status_but_its_type() -> None:
    data = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    failure = describe(UpstreamError(None, {}, data))
    assert failure is not None and failure.kind is Kind.OVERLOADED and failure.status_code is None


def test_a_body_that_is_not_json_is_still_classified_by_status() -> None:
    failure = describe(UpstreamError(502, {}, b"<html>bad gateway</html>"))
    assert failure is not None and failure.kind is Kind.SERVER
    assert describe(UpstreamError(400, {"x-request-id": "r"}, b"")).kind is Kind.INVALID_REQUEST
