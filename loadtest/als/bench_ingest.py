"""ALS ingest on one core: entries/s the receiver processes, with a synthetic gRPC client.

    .venv/bin/python loadtest/als/bench_ingest.py [--duration 10] [--streams 4] \
        [--out docs/benchmarks.md]

The receiver (junction.als: grpc.aio servicer -> bounded pipeline -> windows, optionally
the JSON-lines sink) runs in its own process pinned to CPU 0; the client runs in another
process pinned to CPU 1 and pushes pre-serialized ``StreamAccessLogsMessage``s of 100
Envoy-shaped entries (junction.als.synthetic: ~240 bytes each on the wire, the size of
Envoy 1.40's entries for a proxied GET) on several streams, as fast as gRPC flow control
lets it, or paced at ``--rate`` entries/s.

Figures, over the measured seconds after a warm-up:
- ingest: entries processed (flattened, counted in the windows, written by the sinks) per
  second; the receiver is saturated when the client offers more, and the surplus shows as
  counted drops (the queue is bounded), never as memory growth;
- CPU: the receiver process's utime+stime (all its threads: gRPC's, the sink's) per
  second, and entries per CPU-second;
- a paced run at the goal rate (100,000 entries/s): drops must be 0.

Results go to stdout and, with ``--out``, to the ALS section of docs/benchmarks.md
(between ``<!-- als-bench:start -->`` and ``<!-- als-bench:end -->``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ENTRIES_PER_MESSAGE = 100
METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# ---- the receiver (child process) ----------------------------------------------------


async def receiver_main(args: argparse.Namespace) -> None:
    from junction.als.pipeline import Pipeline
    from junction.als.receiver import create_server
    from junction.als.sinks import JsonLinesSink, SinkRunner
    from junction.als.windows import Windows

    pin(args.cpu)
    sinks = SinkRunner(
        [JsonLinesSink(args.sink, max_bytes=256 << 20, backups=1)] if args.sink else []
    )
    sinks.start()
    pipeline = Pipeline(Windows(), sinks)
    task = asyncio.create_task(pipeline.run())
    server, port = await create_server(pipeline, "127.0.0.1:0")
    print(json.dumps({"port": port}), flush=True)
    try:
        while True:
            await asyncio.sleep(0.25)
            times = os.times()
            print(
                json.dumps(
                    {
                        **pipeline.counters.to_json(),
                        "sink_dropped": sinks.dropped,
                        "sink_written": sinks.written,
                        "cpu": times.user + times.system,
                        "t": time.monotonic(),
                    }
                ),
                flush=True,
            )
    finally:
        task.cancel()
        await server.stop(0)


# ---- the client (child process) ------------------------------------------------------


def make_payload() -> bytes:
    from junction.als.synthetic import Outcome, message

    now = time.time()
    outcomes = []
    for i in range(ENTRIES_PER_MESSAGE):
        cluster = "web-api-go" if i % 10 == 0 else "web-api-perl"
        decision = ("canary=go" if cluster == "web-api-go" else "canary=perl") if i % 3 else ""
        if i % 17 == 0:
            decision = "exp=feed:treatment"
        outcomes.append(
            Outcome(
                cluster=cluster,
                status=500 if i % 50 == 0 else 200,
                ms=1.0 + (i * 37 % 100) / 10,
                decision=decision,
                start=now - 1.0,
                path=f"/api/items/{i}?view=full",
            )
        )
    return message(outcomes, node="bench-envoy").SerializeToString()


async def client_main(args: argparse.Namespace) -> None:
    import grpc
    from envoy.service.accesslog.v3 import als_pb2

    pin(args.cpu)
    payload = make_payload()
    deadline = time.monotonic() + args.seconds
    per_stream_rate = args.rate / args.streams / ENTRIES_PER_MESSAGE if args.rate else 0.0

    async def one(channel: grpc.aio.Channel) -> None:
        call = channel.stream_unary(
            METHOD,
            request_serializer=None,
            response_deserializer=als_pb2.StreamAccessLogsResponse.FromString,
        )

        async def stream() -> Any:
            start = time.monotonic()
            sent = 0
            while time.monotonic() < deadline:
                yield payload
                sent += 1
                if per_stream_rate:
                    ahead = sent / per_stream_rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)

        await call(stream())

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") for _ in range(args.streams)]
    await asyncio.gather(*(one(c) for c in channels))
    for c in channels:
        await c.close()


# ---- the driver ----------------------------------------------------------------------


def run_once(
    *, duration: float, warmup: float, streams: int, rate: float, sink: str | None
) -> dict[str, Any]:
    py = sys.executable
    here = str(Path(__file__).resolve())
    rargs = [py, here, "--role", "receiver", "--cpu", "0"] + (["--sink", sink] if sink else [])
    receiver = subprocess.Popen(rargs, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = json.loads(receiver.stdout.readline())["port"]
        client = subprocess.Popen(
            [py, here, "--role", "client", "--cpu", "1", "--port", str(port),
             "--streams", str(streams), "--rate", str(rate), "--seconds", str(warmup + duration)]
        )  # fmt: skip
        samples = []
        start = time.monotonic()
        while client.poll() is None:
            line = receiver.stdout.readline()
            samples.append(json.loads(line))
        # Let the queue drain, then one last sample.
        for _ in range(8):
            samples.append(json.loads(receiver.stdout.readline()))
    finally:
        receiver.terminate()
        receiver.wait(10)
    t0 = start + warmup
    first = next(s for s in samples if s["t"] >= t0)
    last = [s for s in samples if s["t"] <= t0 + duration][-1]
    end = samples[-1]
    dt = last["t"] - first["t"]
    cpu = last["cpu"] - first["cpu"]
    processed = last["processed_entries"] - first["processed_entries"]
    return {
        "entries_per_s": processed / dt,
        "cpu_per_s": cpu / dt,
        "entries_per_cpu_s": processed / cpu if cpu else 0.0,
        "offered_per_s": (last["entries"] - first["entries"]) / dt,
        "dropped_entries": end["dropped_entries"],
        "sink_dropped": end["sink_dropped"],
        "received": end["entries"],
        "processed": end["processed_entries"],
        "rejected": end["rejected_malformed"] + end["rejected_oversized"],
    }


def markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    header = (
        "run", "offered entries/s", "processed entries/s", "receiver CPU (cores)",
        "entries per CPU-second", "dropped (queue)", "dropped (sink)",
    )  # fmt: skip
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [
            name, f"{r['offered_per_s']:,.0f}", f"{r['entries_per_s']:,.0f}",
            f"{r['cpu_per_s']:.2f}", f"{r['entries_per_cpu_s']:,.0f}",
            f"{r['dropped_entries']:,}", f"{r['sink_dropped']:,}",
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["driver", "receiver", "client"], default="driver")
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--sink")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--rate", type=float, default=0.0, help="entries/s offered (0: unpaced)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--goal-rate", type=float, default=100_000.0)
    p.add_argument("--out", help="write the results into this markdown file's ALS section")
    args = p.parse_args()
    if args.role != "driver":
        import uvloop

        uvloop.run(receiver_main(args) if args.role == "receiver" else client_main(args))
        return

    sink = "/tmp/junction-als-bench.jsonl"
    runs = {
        "unpaced, windows only": {"rate": 0.0, "sink": None},
        "unpaced, windows + JSON-lines file sink": {"rate": 0.0, "sink": sink},
        f"paced at {args.goal_rate:,.0f}/s, windows + JSON-lines sink": {
            "rate": args.goal_rate,
            "sink": sink,
        },
    }
    results = {}
    for name, kw in runs.items():
        if os.path.exists(sink):
            os.unlink(sink)
        results[name] = run_once(
            duration=args.duration, warmup=args.warmup, streams=args.streams, **kw
        )
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    for leftover in (sink, sink + ".1"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    table = markdown(results, args)
    print(table)
    if args.out:
        from docsection import update_section

        update_section(Path(args.out), "ingest", ingest_section(table, args))


def ingest_section(table: str, args: argparse.Namespace) -> str:
    return (
        f"### Ingest on one core, synthetic gRPC client\n\n"
        f"Receiver pinned to CPU 0 (`sched_setaffinity`), client pinned to CPU 1, "
        f"{args.streams} streams, messages of {ENTRIES_PER_MESSAGE} Envoy-shaped entries "
        f"(`junction.als.synthetic`), {args.duration:g} s measured after {args.warmup:g} s "
        f"of warm-up. Processed = flattened, counted in the windows (DDSketch per key and "
        f"slot) and, where said, written as JSON lines to a file.\n\n{table}\n\n"
        f"```sh\n.venv/bin/python loadtest/als/bench_ingest.py --duration {args.duration:g} "
        f"--streams {args.streams} --out docs/benchmarks.md\n```\n"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
