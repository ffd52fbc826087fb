"""Decisions counted from the access log, whoever made them.

Decisions Envoy makes natively (:mod:`junction.extproc.tiers`: pin routes, the sticky
canary split) never reach the decision service, so its ``/stats`` counters only see the
routes it serves. Every decision, native or not, sets the same decision header, which
Envoy's access logger records with each entry (:mod:`junction.als.logger`); counting the
tags here keeps the totals complete (``GET /als``: ``receiver.decisions``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from junction.als.record import LogRecord, classify

__all__ = ["MAX_TAGS", "DecisionCounts"]

#: Distinct tags kept (tags come from the config, so a handful; bound it anyway).
MAX_TAGS = 1000
#: Where entries whose tag is beyond :data:`MAX_TAGS` are counted.
OTHER = "(other)"
#: Entries without a decision header (routes with nothing to decide, or fail-open).
NONE = "(none)"


class DecisionCounts:
    """Per decision tag and per source (``pin``, ``exp``, ``split``), since start; and the
    requests per (cluster, source, failed): decisions per version as Envoy carried them
    out, for ``junction_als_requests_total``."""

    __slots__ = ("by_cluster", "by_source", "by_tag")

    def __init__(self) -> None:
        self.by_tag: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()
        self.by_cluster: Counter[tuple[str, str, bool]] = Counter()

    def add(self, records: Iterable[LogRecord]) -> None:
        by_tag, by_source, by_cluster = self.by_tag, self.by_source, self.by_cluster
        for r in records:
            tag = r.decision or NONE
            if tag not in by_tag and len(by_tag) >= MAX_TAGS:
                tag = OTHER
            by_tag[tag] += 1
            source = classify(r.decision)[0]  # no tag: split (Envoy's weights chose)
            if r.decision:
                by_source[source] += 1
            key = (r.cluster, source, r.failed)
            if key not in by_cluster and len(by_cluster) >= MAX_TAGS:
                key = (OTHER, source, r.failed)  # a client sending made-up cluster names
            by_cluster[key] += 1

    def to_json(self) -> dict[str, Any]:
        return {"by_tag": dict(sorted(self.by_tag.items())), "by_source": dict(self.by_source)}
