"""Loading a Junction document: YAML text in, a validated :class:`Config` or a
:class:`ConfigError` out, with every problem named by its YAML path and line."""

from __future__ import annotations

import collections
import difflib
import hashlib
import threading
from collections.abc import Sequence
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from junction.config.decisions_check import cross_check_decisions
from junction.config.egress import cross_check_egress
from junction.config.errors import ConfigError, Problem, format_path
from junction.config.model import Config, group_by_prefix
from junction.config.yamldoc import Document, parse_yaml
from junction.names import RESERVED_CLUSTERS

__all__ = [
    "config_version",
    "cross_check",
    "load_config",
    "prepare_config",
    "remember_config",
    "validate_document",
]

M = TypeVar("M", bound=BaseModel)


def load_config(text: str, origin: str) -> Config:
    """Parse and validate ``text``; ``origin`` (a file path or ``consul:KEY``) prefixes errors.

    When this very ``text`` object was just prepared (:func:`prepare_config`, e.g. in a
    worker thread), that outcome is returned at once instead of parsing again: this is how
    an event loop hands the work elsewhere without its callers changing.
    """
    with _PREPARED_LOCK:
        hit = next((r for t, o, r in reversed(_PREPARED) if t is text and o == origin), None)
    if isinstance(hit, ConfigError):
        raise ConfigError(hit.origin, list(hit.problems))
    if hit is not None:
        return hit
    doc = parse_yaml(text, origin)
    return validate_document(doc, Config, origin)


#: The last few prepared outcomes: (text, origin, Config or the error). Matched by the
#: identity of ``text``, so a lookup costs nothing however long the document is.
_PREPARED: collections.deque[tuple[str, str, Config | ConfigError]] = collections.deque(maxlen=4)
_PREPARED_LOCK = threading.Lock()


def prepare_config(text: str, origin: str) -> Config | ConfigError:
    """:func:`load_config` ``text`` and remember the outcome for the next
    ``load_config(text, origin)`` with the same ``text`` object. Thread-safe."""
    try:
        outcome: Config | ConfigError = load_config(text, origin)
    except ConfigError as exc:
        outcome = exc
    remember_config(text, origin, outcome)
    return outcome


def remember_config(text: str, origin: str, outcome: Config | ConfigError) -> None:
    """Make ``outcome`` what ``load_config(text, origin)`` gives for this ``text`` object
    (e.g. a rejection because preparing it took too long)."""
    with _PREPARED_LOCK:
        _PREPARED.append((text, origin, outcome))


def config_version(text: str) -> str:
    """A short, stable version for a document's text (what /status and logs show)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def validate_document(doc: Document, model: type[M], origin: str) -> M:
    """Validate parsed YAML against ``model``; used for configs and instance files alike."""
    if not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else f"a {type(doc.data).__name__}"
        raise ConfigError(origin, [Problem("", f"must be a mapping, got {what}", doc.line_of(()))])
    try:
        result = model.model_validate(doc.data)
    except ValidationError as exc:
        problems = [_problem(err, doc, model) for err in exc.errors()]
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ConfigError(origin, _dedupe(problems)) from None
    if isinstance(result, Config):
        cross = cross_check(result)
        if cross:
            raise ConfigError(
                origin, [Problem(format_path(p), m, doc.line_of(p)) for p, m in cross]
            )
    return result


def cross_check(config: Config) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span sections; returns (path, message) pairs."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    many = isinstance(config.route, list)

    def route_path(i: int, *rest: str | int) -> tuple[str | int, ...]:
        return ("route", i, *rest) if many else ("route", *rest)

    known = set(config.cluster_names())
    declared = sorted(set(config.cluster.loadbalancer) | set(config.endpoint.eds))
    for i, block in enumerate(config.route_blocks()):
        for name in block.cluster:
            if name in RESERVED_CLUSTERS:
                out.append((route_path(i, "cluster", name), "is reserved for Junction's own use"))
            elif name not in declared:
                out.append((route_path(i, "cluster", name), _undeclared(name, declared)))
    for name in config.cluster.loadbalancer:
        if name in RESERVED_CLUSTERS:
            out.append((("cluster", "loadbalancer", name), "is reserved for Junction's own use"))
    for name in config.endpoint.eds:
        if name not in known:
            out.append(
                (("endpoint", "eds", name), "no route or cluster.loadbalancer entry names it")
            )
    seen: dict[str, int] = {}
    for i, block in enumerate(config.route_blocks()):
        for j, domain in enumerate(block.domain):
            if domain in seen:
                out.append(
                    (
                        route_path(i, "domain", j),
                        f"{domain!r} is already served by route[{seen[domain]}]",
                    )
                )
            seen.setdefault(domain, i)
        for prefix, members in group_by_prefix(block).items():
            if sum(w for _, w in members) == 0:
                first = members[0][0]
                out.append(
                    (
                        route_path(i, "cluster", first, "weight"),
                        f"prefix {prefix!r}: the weights of its clusters sum to 0",
                    )
                )
    out.extend(cross_check_decisions(config))
    out.extend(cross_check_egress(config))
    return out


def _undeclared(name: str, declared: Sequence[str]) -> str:
    """A route names a cluster no section declares: most likely a typo, which must not
    send that route's share to an empty cluster (SPEC.md: a typo must not change
    production routing). ``{}`` declares a cluster that wants every default."""
    close = difflib.get_close_matches(name, declared, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"cluster {name!r} is declared neither under cluster.loadbalancer nor under "
        f"endpoint.eds; {hint}(declare it, e.g. 'cluster.loadbalancer.{name}: {{}}' "
        "for the defaults)"
    )


# ---- pydantic errors -> problems -----------------------------------------------------

_MESSAGES = {
    "missing": "required key is missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _problem(err: Any, doc: Document, model: type[BaseModel]) -> Problem:
    loc = _clean_loc(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown key" + _suggest(loc, model)
    elif kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected}, got {err.get('input')!r}"
    elif kind == "too_short":
        message = "must not be empty"
    elif kind in _MESSAGES:
        got = err.get("input")
        message = _MESSAGES[kind] + ("" if kind == "missing" else f", got {_describe(got)}")
    else:
        message = err["msg"].removeprefix("Value error, ")
    return Problem(format_path(loc), message, doc.line_of(loc))


def _clean_loc(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """Drop pydantic's union-branch markers (``RouteBlock``, ``list[RouteBlock]``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _suggest(loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    """'did you mean ...' from the keys the enclosing model allows."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    allowed = _allowed_keys(loc[:-1], model)
    close = difflib.get_close_matches(loc[-1], allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""


def _allowed_keys(path: tuple[str | int, ...], model: type[BaseModel]) -> list[str]:
    """The keys a mapping at ``path`` may have, when a model defines them."""
    options: list[Any] = [model]
    for part in path:
        options = [nxt for ann in options for c in _flatten(ann) if (nxt := _step(c, part))]
    for ann in options:
        for c in _flatten(ann):
            if isinstance(c, type) and issubclass(c, BaseModel):
                return [f.alias or n for n, f in c.model_fields.items()]
    return []


def _flatten(annotation: Any) -> list[Any]:
    """``Annotated[X | list[X], ...]`` -> ``[X, list[X]]``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _flatten(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [c for a in get_args(annotation) for c in _flatten(a)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one step down ``part`` (a key or an index), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(part, int):
            return None
        fields = annotation.model_fields.items()
        field = next((f for n, f in fields if (f.alias or n) == part), None)
        return field.annotation if field else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and isinstance(part, str):
        return args[1]
    if origin in (list, tuple) and isinstance(part, int):
        return args[0]
    return None


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out
