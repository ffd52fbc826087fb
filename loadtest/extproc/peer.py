"""The yardstick: the ext_proc server a user would write from the docs, on
``envoy-data-plane`` (betterproto2 messages) and ``grpclib``. Benchmark use only.

It makes the same pin decision as Junction (``x-junction-version`` -> ``x-junction-cluster``,
decision and version headers, ``clear_route_cache``), written the obvious way: a
``ExternalProcessorBase`` subclass, one response built per message.

    python loadtest/extproc/peer.py --port 9102

Needs the bench extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from envoy_data_plane.envoy.config.core.v3 import (
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
)
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    CommonResponse,
    ExternalProcessorBase,
    HeaderMutation,
    HeadersResponse,
    ProcessingRequest,
    ProcessingResponse,
)
from grpclib.server import Server

VERSIONS = {"perl": "web-api-perl", "go": "web-api-go"}
OVERWRITE = HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def _set(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(
        header=HeaderValue(key=key, raw_value=value.encode()), append_action=OVERWRITE
    )


class PinProcessor(ExternalProcessorBase):
    async def process(
        self, messages: AsyncIterator[ProcessingRequest]
    ) -> AsyncIterator[ProcessingResponse]:
        async for message in messages:
            if message.request_headers is None:
                yield ProcessingResponse(response_headers=HeadersResponse())
                continue
            pins = [
                h.raw_value.decode(errors="replace")
                for h in message.request_headers.headers.headers
                if h.key == "x-junction-version"
            ]
            cluster = VERSIONS.get(pins[0]) if len(pins) == 1 else None
            if cluster is None:
                yield ProcessingResponse(request_headers=HeadersResponse())
                continue
            yield ProcessingResponse(
                request_headers=HeadersResponse(
                    response=CommonResponse(
                        header_mutation=HeaderMutation(
                            set_headers=[
                                _set("x-junction-cluster", cluster),
                                _set("x-junction-decision", f"pin={pins[0]}"),
                                _set("x-junction-version", pins[0]),
                            ]
                        ),
                        clear_route_cache=True,
                    )
                )
            )


async def main(host: str, port: int) -> None:
    server = Server([PinProcessor()])
    await server.start(host, port)
    await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
