"""A :class:`Snapshot` as plain proto3 JSON: for golden files, ``junction render`` and
debugging. Field names are proto3 JSON's camelCase (``json_format.MessageToDict``
defaults), the form Envoy's own config dump and ``--mode validate`` accept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from junction.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

__all__ = ["RENDER_KEYS", "render", "render_json"]

#: Output key per type URL, in the order a reader follows a request.
RENDER_KEYS: Mapping[str, str] = {
    LISTENER: "listeners",
    ROUTE: "routes",
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
}


def render(snapshot: Snapshot) -> dict[str, list[dict[str, Any]]]:
    """``{"listeners": [...], "routes": [...], "clusters": [...], "endpoints": [...]}``,
    each list the resources of that type in proto3 JSON, sorted by resource name."""
    return {
        key: [
            json_format.MessageToDict(res.message)
            for _, res in sorted(snapshot.of_type(type_url).items())
        ]
        for type_url, key in RENDER_KEYS.items()
    }


def render_json(snapshot: Snapshot) -> str:
    """:func:`render` as indented JSON text with a final newline (stable: golden files)."""
    return json.dumps(render(snapshot), indent=2) + "\n"
