"""``apply_canary(config, states) -> Config``: the stored canary weights, applied to a config.

Pure. The xDS publisher applies it before translation, so Envoy's weighted clusters follow
the ramp; the decision service applies it before compiling its tables, so its sticky
canary buckets follow the same weight. One function, so the two cannot disagree.

A state applies only to a service whose canary still has a ``ramp`` with the same baseline
and candidate clusters (a state left over from an earlier candidate, or a ramp removed from
the config, changes nothing). For such a service:

- ``versions.<service>.canary.weight`` becomes the state's weight;
- in every route block that routes to both clusters, the pair's weights are set so the
  candidate gets ``weight`` percent of what the pair had together, and the baseline the
  rest (a pair with 0 together keeps 0). Other clusters' weights are untouched. The candidate stays
  listed at weight 0, so pinned requests and a later resume need no new route.

Route weights are per cluster in the YAML, so a baseline that also shares another prefix
with a third cluster shifts that prefix too; keep canaried prefixes to the pair.

When nothing changes, the same ``Config`` object is returned, so the publisher's
incremental translator keeps its cache.
"""

from __future__ import annotations

from collections.abc import Mapping

from junction.canary.policy import policies
from junction.canary.state import CanaryState
from junction.config.model import Config, RouteBlock

__all__ = ["apply_canary", "canary_weights"]


def canary_weights(config: Config, states: Mapping[str, CanaryState]) -> dict[str, int]:
    """Service -> the candidate weight that applies (only states that match the config)."""
    out: dict[str, int] = {}
    for service, policy in policies(config).items():
        state = states.get(service)
        if state is None:
            continue
        if (state.baseline, state.candidate) != (policy.baseline, policy.candidate):
            continue
        out[service] = state.weight
    return out


def _block(block: RouteBlock, baseline: str, candidate: str, weight: int) -> RouteBlock:
    clusters = block.cluster
    if baseline not in clusters or candidate not in clusters:
        return block
    base, cand = clusters[baseline], clusters[candidate]
    total = base.weight + cand.weight
    if total == 0:
        return block  # the config gives the pair nothing here: nothing to split
    cand_weight = round(total * weight / 100)
    base_weight = total - cand_weight
    if (base.weight, cand.weight) == (base_weight, cand_weight):
        return block
    updated = dict(clusters)
    # model_copy skips validation; both weights stay whole numbers in 0..100.
    updated[baseline] = base.model_copy(update={"weight": base_weight})
    updated[candidate] = cand.model_copy(update={"weight": cand_weight})
    return block.model_copy(update={"cluster": updated})


def apply_canary(config: Config, states: Mapping[str, CanaryState]) -> Config:
    """``config`` with the matching canary states' weights (see the module docstring)."""
    weights = canary_weights(config, states)
    if not weights:
        return config
    versions = dict(config.versions)
    blocks = list(config.route_blocks())
    changed = False
    for service, weight in weights.items():
        sv = versions[service]
        assert sv.canary is not None  # policies() only yields canaries
        baseline, candidate = sv.clusters[sv.default], sv.clusters[sv.canary.version]
        if sv.canary.weight != weight:
            versions[service] = sv.model_copy(
                update={"canary": sv.canary.model_copy(update={"weight": float(weight)})}
            )
            changed = True
        for i, block in enumerate(blocks):
            new = _block(block, baseline, candidate, weight)
            if new is not block:
                blocks[i] = new
                changed = True
    if not changed:
        return config
    route: RouteBlock | list[RouteBlock] = blocks if isinstance(config.route, list) else blocks[0]
    return config.model_copy(update={"route": route, "versions": versions})
