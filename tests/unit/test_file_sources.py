"""The embedded default: config and instances files, watched; bad files keep the last good."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import eventually
from fakes import RecordingSink

from junction.catalog.file import FileCatalog, FileConfig, load_instances
from junction.catalog.model import Health, Instance, health_from_checks
from junction.config.errors import ConfigError

INSTANCES = """\
services:
  web-api-perl:
    - {address: 127.0.0.1, port: 18080, zone: zone-a, region: r1, status: passing}
    - {address: 127.0.0.1, port: 18081, zone: zone-b, status: critical}
  web-api-go:
    - {address: 127.0.0.1, port: 18082, status: warning, weight: 3}
    - {address: 127.0.0.2, port: 18082, status: maintenance}
"""


def test_instances_file_as_in_the_spec() -> None:
    services = load_instances(INSTANCES, "i.yaml")
    assert services["web-api-perl"] == (
        Instance("127.0.0.1", 18081, zone="zone-b", health=Health.UNHEALTHY),
        Instance("127.0.0.1", 18080, zone="zone-a", region="r1", health=Health.HEALTHY),
    )
    assert [(i.health, i.weight) for i in services["web-api-go"]] == [
        (Health.DEGRADED, 3),
        (Health.DRAINING, 1),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services: {a: [{address: x, port: 1}]}", "services.a[0].address: must be an IP address"),
        (
            "services: {a: [{address: 127.0.0.1, port: 0}]}",
            "services.a[0].port: must be an integer 1..65535",
        ),
        (
            "services: {a: [{address: 127.0.0.1, port: 1, status: ok}]}",
            "services.a[0].status: must be one of",
        ),
        (
            "services: {a: [{address: 127.0.0.1, port: 1, zoen: z}]}",
            "services.a[0].zoen: unknown key (did you mean 'zone'?)",
        ),
        ("servces: {}", "servces: unknown key"),
        ("services: {a: [{address: 127.0.0.1}]}", "services.a[0].port: required key is missing"),
    ],
)
def test_bad_instances_files(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_instances(text, "i.yaml")
    assert expected in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("checks", "health"),
    [
        ([], Health.HEALTHY),
        ([("serfHealth", "passing"), ("svc", "passing")], Health.HEALTHY),
        ([("serfHealth", "passing"), ("svc", "warning")], Health.DEGRADED),
        ([("svc", "warning"), ("other", "critical")], Health.UNHEALTHY),
        ([("svc", "passing"), ("_node_maintenance", "critical")], Health.DRAINING),
        ([("_service_maintenance:web-1", "critical"), ("svc", "critical")], Health.DRAINING),
    ],
)
def test_health_mapping(checks: list[tuple[str, str]], health: Health) -> None:
    assert health_from_checks(checks) is health


@contextlib.asynccontextmanager
async def running(coro: object) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)  # type: ignore[arg-type]
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def replace_file(path: Path, text: str) -> None:
    """Write as editors do: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_file_config_reports_changes_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n")
    sink = RecordingSink()
    async with running(FileConfig(path, interval=0.02).run(sink)):
        await eventually(lambda: len(sink.texts) == 1)
        replace_file(path, "a: 2\n")
        await eventually(lambda: len(sink.texts) == 2)
        assert sink.texts[-1] == (str(path), "a: 2\n")
        path.unlink()
        await eventually(lambda: len(sink.errors) == 1)
        assert "cannot read" in sink.errors[0][1]
        path.write_text("a: 3\n")
        await eventually(lambda: len(sink.texts) == 3)
        path.write_bytes(b"a: \xff\xfe\n")  # not UTF-8
        await eventually(lambda: len(sink.errors) == 2)
        assert "cannot read" in sink.errors[1][1] and "utf-8" in sink.errors[1][1]
        assert len(sink.texts) == 3


async def test_file_catalog_follows_file_and_watch_set(tmp_path: Path) -> None:
    path = tmp_path / "instances.yaml"
    path.write_text(INSTANCES)
    catalog = FileCatalog(path, interval=0.02)
    catalog.watch(frozenset({"web-api-perl"}))
    sink = RecordingSink()
    async with running(catalog.run(sink)):
        await eventually(lambda: "web-api-perl" in sink.services)
        assert "web-api-go" not in sink.services
        catalog.watch(frozenset({"web-api-perl", "web-api-go", "web-new"}))
        await eventually(lambda: "web-api-go" in sink.services and "web-new" in sink.services)
        assert sink.services["web-new"] == ()
        # A bad edit keeps the last good instances and says what is wrong...
        before = dict(sink.services)
        replace_file(path, INSTANCES.replace("port: 18080", "port: eighty"))
        await eventually(lambda: len(sink.errors) == 1)
        assert "services.web-api-perl[0].port" in sink.errors[0][1]
        assert sink.services == before
        # ...and the next good edit is applied.
        replace_file(path, INSTANCES.replace("port: 18080", "port: 18090"))
        await eventually(lambda: any(i.port == 18090 for i in sink.services["web-api-perl"]))
        assert sink.events[-1] == ("instances", "web-new") or ("ok", str(path)) in sink.events
