"""Answers the proxy makes itself, in each provider's own error shape."""

from __future__ import annotations

import json

JSON = "application/json"
# The status a request would have had for an error type that came as an SSE event.
STATUS_OF_TYPE = {
    "overloaded_error": 529,
    "api_error": 500,
    "rate_limit_error": 429,
    "timeout_error": 504,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
}


def error_body(kind: str, status: int, error_type: str, message: str) -> bytes:
    if kind == "anthropic":
        body = {"type": "error", "error": {"type": error_type, "message": message}}
    else:
        body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return json.dumps(body, ensure_ascii=False).encode()


def error_event(kind: str, message: str, error_type: str = "api_error") -> bytes:
    """An error as the provider would send it mid-stream."""
    if kind == "anthropic":
        data = {"type": "error", "error": {"type": error_type, "message": message}}
        return f"event: error\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
    data = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
