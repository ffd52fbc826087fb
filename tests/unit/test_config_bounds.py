"""Hostile config documents: bounded in size and in alias expansion, loaded off the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

import pytest
from hostile_yaml import billion_laughs

from junction.catalog.model import Instance
from junction.catalog.offloop import OffLoopConfig
from junction.catalog.source import ConfigSource, SourceSink
from junction.config.errors import ConfigError
from junction.config.load import load_config
from junction.config.yamldoc import MAX_DOCUMENT_BYTES, MAX_EXPANDED_NODES

GOOD = """\
listener: {listen: {port: 8000}}
route: {domain: [a.example], cluster: {web: {prefix: [/]}}}
cluster: {loadbalancer: {web: {}}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text, "t.yaml")
    return [str(p) for p in info.value.problems]


def test_billion_laughs_is_refused_by_path_before_anything_walks_it() -> None:
    text = billion_laughs(head=GOOD)
    assert len(text) < 1024
    # lol6 is the shallowest key that alone exceeds the bound (9^6 * 2 + ... > 1,000,000).
    assert problems(text) == [
        "line 10: lol6: expands to 1,129,312 YAML nodes through aliases (the whole document "
        "to 102,908,600); the limit is 1,000,000"
    ]


def test_the_deepest_oversized_path_is_named_inside_a_section() -> None:
    text = GOOD.replace("route: {domain: [a.example]", "route: {domain: *lol8") + "\n"
    text = billion_laughs() + text
    found = problems(text)
    assert len(found) == 1 and found[0].startswith("line 7: lol6: expands to ")


def test_aliases_within_the_bound_are_fine() -> None:
    text = (
        "listener: {listen: {port: 8000}}\nroute:\n"
        "  - {domain: [a.example], cluster: {web: {prefix: &p [/]}}}\n"
        "  - {domain: [b.example], cluster: {web: {prefix: *p}}}\n"
        "cluster: {loadbalancer: {web: {}}}\n"
    )
    config = load_config(text, "t")
    assert [b.cluster["web"].prefix for b in config.route_blocks()] == [("/",), ("/",)]
    small = billion_laughs(levels=3, width=3)  # 3^3 leaves: well within the bound
    found = problems(GOOD + small)
    assert all("unknown key" in p for p in found) and not any("expands" in p for p in found)


def test_a_recursive_alias_is_refused() -> None:
    assert problems(GOOD + "x: &x [*x]\n") == [
        "line 4: <document>: an alias refers to a node that contains it (recursive)"
    ]


def test_an_oversized_document_is_refused_naming_the_limit() -> None:
    text = GOOD + "#" + "x" * MAX_DOCUMENT_BYTES + "\n"
    assert problems(text) == [
        f"<document>: document is {len(text):,} bytes; the limit is {MAX_DOCUMENT_BYTES:,}"
    ]
    assert MAX_EXPANDED_NODES == 1_000_000


# ---- off the loop ------------------------------------------------------------------------


class Recorder:
    """A sink that loads each text it is given, as the publisher does, on the loop."""

    def __init__(self) -> None:
        self.outcomes: list[object] = []
        self.done = asyncio.Event()

    def config_text(self, origin: str, text: str) -> None:
        try:
            self.outcomes.append(load_config(text, origin))
        except ConfigError as exc:
            self.outcomes.append(exc)
        self.done.set()

    def instances(self, service: str, instances: Iterable[Instance]) -> None:
        pass

    def source_error(self, origin: str, message: str) -> None:
        pass

    def source_ok(self, origin: str) -> None:
        pass


class OneText(ConfigSource):
    def __init__(self, text: str) -> None:
        self.origin = "one.yaml"
        self.text = text

    async def run(self, sink: SourceSink) -> None:
        sink.config_text(self.origin, self.text)
        await asyncio.Event().wait()


async def run_once(source: ConfigSource) -> Recorder:
    recorder = Recorder()
    task = asyncio.create_task(source.run(recorder))
    try:
        await asyncio.wait_for(recorder.done.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return recorder


async def test_the_document_is_loaded_in_a_worker_thread_and_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import junction.catalog.offloop as offloop

    threads: list[str] = []
    real = offloop.prepare_config

    def spy(text: str, origin: str) -> object:
        threads.append(threading.current_thread().name)
        return real(text, origin)

    monkeypatch.setattr(offloop, "prepare_config", spy)
    recorder = await run_once(OffLoopConfig(OneText(GOOD)))
    assert threads and threads[0].startswith("config")  # not the loop's thread
    [config] = recorder.outcomes
    assert not isinstance(config, ConfigError)
    laughs = await run_once(OffLoopConfig(OneText(billion_laughs(head=GOOD))))
    [error] = laughs.outcomes
    assert isinstance(error, ConfigError) and "expands to" in str(error)


async def test_a_document_not_loaded_in_time_is_rejected_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import junction.catalog.offloop as offloop

    release = threading.Event()
    real = offloop.prepare_config

    def slow(text: str, origin: str) -> object:
        release.wait(30)  # bounded: released below
        return real(text, origin)

    monkeypatch.setattr(offloop, "prepare_config", slow)
    try:
        recorder = await run_once(OffLoopConfig(OneText(GOOD), timeout=0.05))
    finally:
        release.set()
    [error] = recorder.outcomes
    assert isinstance(error, ConfigError)
    assert str(error) == "one.yaml: <document>: not parsed and validated within 0.05 s; rejected"
