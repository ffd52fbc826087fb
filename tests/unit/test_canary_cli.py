"""`junction canary ...` against a real HTTP API (CanaryApi on 127.0.0.1:0), and the flags of
`junction up|serve` that turn the ALS loop on and off."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from junction.als import cli as als_cli
from junction.canary import cli as canary_cli
from junction.canary.api import CanaryApi
from junction.canary.source import CanaryBoard, CanaryStateSource
from junction.canary.store import FileStateStore
from junction.cli import _parser, main
from junction.config.load import load_config

CONFIG = load_config(
    """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10, ramp: {steps: [10, 50, 100], interval: 30}}
""",
    "c.yaml",
)


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[str]:
    store = FileStateStore(tmp_path / "state", poll=0.02)
    board = CanaryBoard()
    api = CanaryApi(store, board, lambda: CONFIG)
    app = web.Application()
    api.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    watcher = asyncio.create_task(CanaryStateSource(store).run(board))
    yield f"127.0.0.1:{port}"
    watcher.cancel()
    await runner.cleanup()


async def canary(address: str, *argv: str) -> tuple[int, str]:
    args = _parser().parse_args(["canary", *argv, "--http", address])
    out = io.StringIO()
    code = await asyncio.to_thread(canary_cli.run, args, out)
    return code, out.getvalue()


async def test_commands_and_status(http: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await canary(http, "status")
    assert code == 0 and "web-api: no state stored yet" in out
    code, out = await canary(http, "pause", "web-api")
    assert (code, out.strip()) == (0, "web-api: paused at 10% (paused by operator at 10%)")
    code, _ = await canary(http, "pause", "web-api")
    assert code == 1 and "cannot pause a canary that is paused" in capsys.readouterr().err
    for _ in range(100):  # the board follows the store (polled every 20 ms)
        code, out = await canary(http, "status", "web-api")
        if "paused" in out:
            break
        await asyncio.sleep(0.02)
    assert "web-api: paused at 10% (step 1/3), candidate web-api-go vs baseline web-api-perl" in out
    assert "policy: steps [10, 50, 100], interval 30s" in out
    assert "pause" in out.splitlines()[-1]
    code, out = await canary(http, "promote", "web-api", "--json")
    assert code == 0 and '"phase": "promoted"' in out
    code, _ = await canary(http, "abort", "nope")
    assert code == 1 and "'nope' has no canary ramp" in capsys.readouterr().err
    code, _ = await canary(http, "pause")
    assert code == 2


def test_an_unreachable_api_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["canary", "status", "--http", "127.0.0.1:1"]) == 2
    assert "cannot reach http://127.0.0.1:1" in capsys.readouterr().err


def settings(argv: list[str]) -> dict[str, object]:
    args = _parser().parse_args(argv)
    return als_cli.run_settings(args, up=args.command == "up")


def test_run_flags() -> None:
    up = settings(["up", "-c", "c.yaml", "--instances", "i.yaml"])
    assert up["als"] is not None and up["als"].port == 0 and up["als"].controller  # type: ignore[attr-defined]
    assert up["access_log"] is not None and up["als_port"] is None
    external = settings(["up", "-c", "c", "--instances", "i", "--no-als", "--als-port", "9001"])
    assert (
        external["als"] is None
        and external["als_port"] == 9001
        and external["access_log"] is not None
    )
    off = settings(["up", "-c", "c", "--instances", "i", "--no-als"])
    assert off["als"] is None and off["access_log"] is None  # no receiver anywhere: no logger
    serve = settings(["serve", "-c", "c", "--instances", "i"])
    assert (
        serve["als"] is None and serve["access_log"] is not None
    )  # `junction bootstrap` has junction_als
    tuned = settings(
        [
            "up",
            "-c",
            "c",
            "--instances",
            "i",
            "--als-flush-interval",
            "0.25",
            "--als-buffer-bytes",
            "4096",
            "--no-canary",
            "--als-log",
            "-",
        ]
    )
    log = tuned["access_log"]
    assert (log.flush_interval, log.buffer_size_bytes) == (0.25, 4096)  # type: ignore[attr-defined]
    assert tuned["als"].controller is False and tuned["als"].log_path == "-"  # type: ignore[attr-defined]


def test_bad_flags_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["up", "--als-flush-interval", "-1"])
    assert "-1.0 must be above 0" in capsys.readouterr().err
    args = _parser().parse_args(
        ["up", "-c", "c", "--instances", "i", "--als-buffer-bytes", "99999999"]
    )
    from junction.als.errors import AlsError

    with pytest.raises(AlsError, match=r"als buffer size: must be 0\.\.1048576 bytes"):
        als_cli.run_settings(args, up=True)


def test_report_and_als_need_their_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--log", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert main(["als", "serve"]) == 1
    assert "give -c CONFIG or --consul-addr with --consul-key" in capsys.readouterr().err


def test_status_shows_the_tests_the_controller_decides_on() -> None:
    body = {
        "policy": None,
        "state": {"phase": "ramping", "weight": 10, "candidate": "go", "baseline": "perl"},
        "tests": {
            "rollback_e": 3.2,
            "reject_at": 20.0,
            "errors_e": 5.1,
            "latency_e": [0.9, 1.0],
            "noninferior_e": [2.0, 1.5, 1.1],
        },
    }
    text = canary_cli.format_service("web-api", body)
    assert "tests: rollback e-value 3.2 (rolls back at 20.0), errors 5.1" in text
