"""The floor under any proxy on this machine: an aiohttp server that forwards each request to
the provider with an aiohttp client and writes the answer back as it comes — no parsing, no
checkpoint, no store. `benchmarks.proxy` runs it beside `agentguard proxy` so the table shows
how much of the added latency is the extra loopback hop itself (two more process wake-ups per
request) and how much is agentguard's work.

python -m benchmarks.forwarder UPSTREAM_URL     prints http://127.0.0.1:PORT, serves until killed
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

_SKIP = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


async def serve(upstream: str) -> None:
    session = ClientSession(
        connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None), auto_decompress=True
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _SKIP]
        url = upstream.rstrip("/") + request.path_qs
        async with session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as answer:
            response = web.StreamResponse(status=answer.status)
            for name, value in answer.headers.items():
                if name.lower() not in _SKIP | {"content-encoding", "date", "server"}:
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"forwarding on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
