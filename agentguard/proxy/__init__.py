"""`agentguard proxy` / `agentguard run`: the second face over the same guarded step.

Agents that cannot be wrapped (Claude Code, OpenAI-speaking CLIs) speak HTTP to
`ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL`; pointed at this proxy, each of their model calls
becomes one guarded step of a `Guard` — checkpointed, retried, fallen back, recorded — while
the request and the answer pass through verbatim and streams pass through live.

    server       the aiohttp app: endpoints, answers, the streaming write loop
    sessions     one run per client session; conversation lanes; a step driven on the loop
    upstream     one attempt: the request forwarded verbatim, the answer (or the error) back
    stream       a streamed answer, held back until its first content, then passed on live
    hold         a request held through a storm; a streaming client kept alive with pings
    sse          splitting an SSE byte stream into events, and assembling the final message
    credentials  which credential a request presented, which routes it may use
    answers      error bodies in each provider's shape
    options      what the proxy was started with (routes, policy, project, keys)
"""

from agentguard.proxy.options import ProxyOptions
from agentguard.proxy.server import ProxyServer, ProxyThread

__all__ = ["ProxyOptions", "ProxyServer", "ProxyThread"]
