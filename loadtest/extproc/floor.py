"""The floor of the grpc.aio stack: an ext_proc servicer that parses nothing and answers
every message with one constant, pre-serialized pin decision. No server on grpc.aio can
do less per request, so it measures what the stack itself costs. Benchmark use only.

    python loadtest/extproc/floor.py --port 9103
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
ANSWER = ep.ProcessingResponse(
    request_headers=ep.HeadersResponse(
        response=ep.CommonResponse(
            header_mutation=ep.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=k, raw_value=v), append_action=OVERWRITE
                    )
                    for k, v in (
                        ("x-junction-cluster", b"web-api-go"),
                        ("x-junction-decision", b"pin=go"),
                        ("x-junction-version", b"go"),
                    )
                ]
            ),
            clear_route_cache=True,
        )
    )
).SerializeToString()


async def process(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield ANSWER


async def main(host: str, port: int) -> None:
    handler = grpc.method_handlers_generic_handler(
        "envoy.service.ext_proc.v3.ExternalProcessor",
        {"Process": grpc.stream_stream_rpc_method_handler(process)},  # bytes in, bytes out
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.host, args.port))
