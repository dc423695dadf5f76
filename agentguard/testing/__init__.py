"""A fake LLM provider on 127.0.0.1 for tests, the demo and benchmarks.

agentguard must be proven against the real `anthropic` and `openai` SDK clients — their own
retry loops, SSE parsers, exception classes and httpx2 transport — so this is a real HTTP
server speaking Anthropic Messages and OpenAI Chat Completions (JSON and SSE), with a
scripted "model" and scripted faults (error statuses, mid-stream errors, dropped and
stalled connections)::

    with FakeProvider() as fake:
        fake.script(overloaded(), ok(Turn(text="hello")))
        client = anthropic.Anthropic(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        ...
        assert [r.reply for r in fake.requests] == ["error:529", "ok"]
"""

from agentguard.testing.recording import RecordedRequest
from agentguard.testing.script import (
    Reply,
    ScriptedModel,
    ToolCall,
    Turn,
    drop,
    error,
    midstream_error,
    ok,
    overloaded,
    stall,
)
from agentguard.testing.server import FakeProvider

__all__ = [
    "FakeProvider",
    "RecordedRequest",
    "Reply",
    "ScriptedModel",
    "ToolCall",
    "Turn",
    "drop",
    "error",
    "midstream_error",
    "ok",
    "overloaded",
    "stall",
]
