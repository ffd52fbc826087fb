"""Tiny demo upstreams: each answers with its service name, so the split shows with curl.

    python examples/upstream.py web-api-perl:18080 web-api-go:18082

Every response carries ``x-upstream-service`` and ``x-upstream-port``; the body is the
service name. ``GET /health_check`` answers 200 until told otherwise:
``POST /_control?health=fail`` (or ``ok``) flips it, ``POST /_control?error_rate=0.2``
makes that share of requests answer 500.
With ``--egress HOST:PORT`` (Junction's egress listener), a path containing
``/call/CALLEE/`` is a demo app calling another service: the upstream sends ``GET /REST``
to the egress listener with ``Host: CALLEE`` and the ``x-junction-version`` it received,
and answers with the callee's ``x-upstream-service`` as ``x-callee-service``.
``?delay=S`` on any other request answers after S seconds (at most 30: a request in
flight, for drain tests). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal

from aiohttp import ClientError, ClientSession, ClientTimeout, web

VERSION_HEADER = "x-junction-version"


async def call_through_egress(
    request: web.Request, egress: str, callee: str, rest: str
) -> tuple[int, dict[str, str]]:
    """The demo app's own outbound call: to Junction's egress listener, forwarding the
    version header it was given (that is all an application does to stay on a release)."""
    headers = {"Host": callee}
    if VERSION_HEADER in request.headers:
        headers[VERSION_HEADER] = request.headers[VERSION_HEADER]
    timeout = ClientTimeout(total=10)
    async with (
        ClientSession(timeout=timeout) as session,
        session.get(f"http://{egress}/{rest}", headers=headers) as resp,
    ):
        await resp.read()
        return resp.status, {
            "x-callee-service": resp.headers.get("x-upstream-service", "-"),
            "x-callee-port": resp.headers.get("x-upstream-port", "-"),
            "x-callee-version": resp.headers.get(f"x-echo-{VERSION_HEADER}", "-"),
        }


def make_app(name: str, port: int, egress: str | None = None) -> web.Application:
    state = {"healthy": True, "error_rate": 0.0}

    async def control(request: web.Request) -> web.Response:
        if "health" in request.query:
            state["healthy"] = request.query["health"] != "fail"
        if "error_rate" in request.query:
            state["error_rate"] = float(request.query["error_rate"])
        return web.json_response(state)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if state["healthy"] else 503, text="ok\n")

    async def anything(request: web.Request) -> web.Response:
        headers = {
            "x-upstream-service": name,
            "x-upstream-port": str(port),
            "x-upstream-host": request.headers.get("Host", ""),
        }
        for echoed in ("x-junction-decision", "x-junction-version"):
            if echoed in request.headers:
                headers[f"x-echo-{echoed}"] = request.headers[echoed]
        if "delay" in request.query:
            await asyncio.sleep(min(30.0, max(0.0, float(request.query["delay"]))))
        status = 500 if random.random() < float(state["error_rate"]) else 200
        if egress and "/call/" in request.path:
            callee, _, rest = request.path.split("/call/", 1)[1].partition("/")
            try:
                code, called = await call_through_egress(request, egress, callee, rest)
            except (ClientError, TimeoutError) as exc:
                code, called = 502, {"x-callee-error": type(exc).__name__}
            headers.update(called)
            status = status if code == 200 else 502
        return web.Response(status=status, text=f"{name}\n", headers=headers)

    app = web.Application()
    app.router.add_post("/_control", control)
    app.router.add_get("/health_check", health)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def serve(specs: list[tuple[str, int]], host: str, egress: str | None = None) -> None:
    runners = []
    for name, port in specs:
        runner = web.AppRunner(make_app(name, port, egress), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        print(f"upstream {name} on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("serve", nargs="+", metavar="NAME:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--egress", metavar="HOST:PORT", help="Junction's egress listener")
    args = parser.parse_args()
    specs = []
    for spec in args.serve:
        name, _, port = spec.rpartition(":")
        if not name or not port.isdigit():
            parser.error(f"{spec!r}: expected NAME:PORT, e.g. web-api-go:18082")
        specs.append((name, int(port)))
    asyncio.run(serve(specs, args.host, args.egress))


if __name__ == "__main__":
    main()
