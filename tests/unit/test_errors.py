"""One documented error base per package, under JunctionError (see junction/errors.py)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from junction.als.errors import AlsError
from junction.canary.errors import CanaryError
from junction.catalog.errors import CatalogError
from junction.config.errors import ConfigError
from junction.drain.model import DrainError
from junction.errors import JunctionError
from junction.extproc.errors import BadMessage, ExtProcError
from junction.xds.errors import XdsError

ROOT = Path(__file__).resolve().parents[2]
BASES: dict[str, type[Exception]] = {
    "junction.als": AlsError,
    "junction.canary": CanaryError,
    "junction.catalog": CatalogError,
    "junction.config": ConfigError,
    "junction.drain": DrainError,
    "junction.extproc": ExtProcError,
    "junction.xds": XdsError,
}


def _public_exceptions() -> dict[str, type[BaseException]]:
    found = {}
    for path in sorted((ROOT / "junction").rglob("*.py")):
        if path.name == "__main__.py":
            continue  # running it is the CLI
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
            ):
                found[f"{name}.{attr}"] = value
    return found


def test_every_public_error_derives_from_its_package_base() -> None:
    wrong = []
    for qualified, cls in _public_exceptions().items():
        package = ".".join(qualified.split(".")[:2])
        base = BASES.get(package, JunctionError)
        if not issubclass(cls, base):
            wrong.append(f"{qualified} is not a {base.__name__}")
    assert wrong == []
    assert all(issubclass(base, JunctionError) for base in BASES.values())


def test_a_bad_message_is_not_a_value_error() -> None:
    assert not issubclass(BadMessage, ValueError)
