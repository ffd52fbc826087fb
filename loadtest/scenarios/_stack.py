"""The demo stack a load test can start for itself: the demo upstreams
(examples/upstream.py) and ``junction up`` (control plane, decision service, a real Envoy),
on free ports or on the example's own ports, stopped when the run ends.

Free ports (the default) let a load test run beside ``make run`` or another test; the
config and instances files are then rewritten into the results folder with those ports.
Everything binds 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _checks import LoadTestError

__all__ = ["DemoStack", "StackPorts", "free_port", "free_ports"]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: How long the stack may take to answer /healthz 200 (Envoy started, config ACKed, every
#: cluster with a healthy host) and the decision service to run the config.
READY_TIMEOUT = 60.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all held open until every one is picked, because a port
    closed at once can be handed out again by the next bind (seen: the listener given an
    upstream's port)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


@dataclass(frozen=True)
class StackPorts:
    listener: int
    status: int
    envoy_admin: int
    xds: int
    extproc_stats: int
    #: service -> the ports of its demo upstreams.
    upstreams: dict[str, list[int]] = field(default_factory=dict)


def _http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class DemoStack:
    """``with DemoStack(config, instances, workdir) as stack:`` runs the stack.

    ``config`` and ``instances`` are files as ``junction up`` takes them; with
    ``free_ports`` their listener and upstream ports are replaced by free ones (copies in
    ``workdir``). ``extproc_workers``: the decision service's processes (1 by default:
    the load generator, Envoy and the upstreams need the other cores).
    """

    def __init__(
        self,
        config: Path,
        instances: Path,
        workdir: Path,
        *,
        free_ports: bool = True,
        extproc_workers: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.free_ports = free_ports
        self.extproc_workers = extproc_workers
        self.extra_args = extra_args
        self._config_doc = yaml.safe_load(config.read_text())
        self._instances_doc = yaml.safe_load(instances.read_text())
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        self.ports = self._plan_ports()

    def _plan_ports(self) -> StackPorts:
        services = self._instances_doc["services"]
        if not self.free_ports:
            listen = self._config_doc["listener"]["listen"]
            return StackPorts(
                listener=int(listen["port"]),
                status=8081,
                envoy_admin=9901,
                xds=18000,
                extproc_stats=9004,
                upstreams={n: [int(i["port"]) for i in items] for n, items in services.items()},
            )
        sizes = {name: len(items) for name, items in services.items()}
        ports = iter(free_ports(5 + sum(sizes.values())))
        return StackPorts(
            listener=next(ports),
            status=next(ports),
            envoy_admin=next(ports),
            xds=next(ports),
            extproc_stats=next(ports),
            upstreams={name: [next(ports) for _ in range(n)] for name, n in sizes.items()},
        )

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.ports.listener}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.ports.status}"

    def _write_files(self) -> tuple[Path, Path]:
        config = dict(self._config_doc)
        config["listener"] = {
            **config["listener"],
            "listen": {**config["listener"]["listen"], "port": self.ports.listener},
        }
        services = {
            name: [
                {**item, "port": port}
                for item, port in zip(items, self.ports.upstreams[name], strict=True)
            ]
            for name, items in self._instances_doc["services"].items()
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "stack-config.yaml"
        instances_path = self.workdir / "stack-instances.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        instances_path.write_text(yaml.safe_dump({"services": services}, sort_keys=False))
        return config_path, instances_path

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / log_name).open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        self._procs.append(proc)
        return proc

    def __enter__(self) -> DemoStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        config, instances = self._write_files()
        specs = [f"{name}:{port}" for name, ports in self.ports.upstreams.items() for port in ports]
        self._spawn([sys.executable, str(EXAMPLES / "upstream.py"), *specs], "upstreams.log")
        self._spawn(
            [
                sys.executable, "-m", "junction", "up", "-c", str(config),
                "--instances", str(instances),
                "--http-port", str(self.ports.status), "--xds-port", str(self.ports.xds),
                "--envoy-admin-port", str(self.ports.envoy_admin),
                "--extproc-workers", str(self.extproc_workers),
                "--extproc-stats-port", str(self.ports.extproc_stats),
                # A fresh ramp for every run: a rollback left by an earlier run must not
                # decide this one. Short flushes: the controller sees outcomes sooner.
                "--state-dir", str(self.workdir / "canary-state"),
                "--als-flush-interval", "0.2",
                "--node-id", f"loadtest-{os.getpid()}-{self.ports.status}",
                *self.extra_args,
            ],
            "junction.log",
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until ``/healthz`` is 200 and the decision service (if any) runs the config."""
        deadline = time.monotonic() + timeout
        want = [f"{self.control}/healthz"]
        if self.extproc_workers > 0:
            want.append(f"http://127.0.0.1:{self.ports.extproc_stats}/healthz")
        pending = list(want)
        while pending:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise LoadTestError(
                        f"a demo stack process exited (pid {proc.pid}: {proc.returncode}); "
                        f"see {self.workdir}/junction.log and upstreams.log"
                    )
            try:
                status, _ = _http_get(pending[0])
            except OSError:
                status = 0
            if status == 200:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise LoadTestError(
                    f"the demo stack was not ready in {timeout:.0f} s ({pending[0]} answers "
                    f"{status or 'nothing'}); see {self.workdir}/junction.log"
                )
            time.sleep(0.2)

    def envoy_admin(self) -> str:
        _, body = _http_get(f"{self.control}/status", timeout=5.0)
        admin: str = json.loads(body)["envoy_admin"]
        return admin

    def stop(self) -> None:
        """SIGTERM every child (``junction up`` stops its Envoy), then SIGKILL stragglers."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
