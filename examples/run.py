"""`make run`: the demo upstreams, then `junction up` on examples/chain.yaml (the seed
example plus a call chain through the egress listener), until Ctrl-C.

The upstreams are the services named in examples/instances.yaml, on their ports; they
call each other through the egress listener (127.0.0.1:8001) on ``/call/CALLEE/...``. On
SIGINT/SIGTERM both children are stopped; `junction up` stops its Envoy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
#: The egress listener of examples/chain.yaml, which the demo upstreams call through.
EGRESS = "127.0.0.1:8001"


def main() -> int:
    instances = yaml.safe_load((HERE / "instances.yaml").read_text())["services"]
    specs = [f"{name}:{i['port']}" for name, items in instances.items() for i in items]
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py"), "--egress", EGRESS, *specs]
    )
    junction = subprocess.Popen(
        [
            sys.executable, "-m", "junction", "up",
            "-c", str(HERE / "chain.yaml"), "--instances", str(HERE / "instances.yaml"),
            *sys.argv[1:],
        ]
    )  # fmt: skip
    print(
        "\nTry:  curl -s -H 'Host: example.com' http://127.0.0.1:8000/api/x"
        "\n      curl -s http://127.0.0.1:8081/status"
        "\nThe chain (ingress pinned to go -> web-api-go -> egress -> web-feed-go):"
        "\n      curl -s -D - -H 'Host: example.com' -H 'x-junction-version: go' \\"
        "\n           http://127.0.0.1:8000/api/call/web-feed/items | grep x-callee"
        "\nDrain an instance:  .venv/bin/junction drain web-api-perl 127.0.0.1:18080 \\"
        "\n           --reason demo --http 127.0.0.1:8081\n",
        flush=True,
    )

    def stop(*_: object) -> None:
        junction.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return junction.wait()
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
