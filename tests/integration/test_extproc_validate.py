"""The decision wiring, every option at once, accepted by the real Envoy (``--mode validate``)."""

from __future__ import annotations

import textwrap

import pytest

from junction.catalog.model import Catalog
from junction.config.load import load_config
from junction.xds.bootstrap import BootstrapOptions, bootstrap
from junction.xds.translate import translate
from junction.xds.validate import check_snapshot, envoy_validate

CONFIG = """\
listener:
  listen: {{port: 8000}}
route:
  - domain: ["example.com", "*.example.org"]
    cluster:
      web-api-perl: {{prefix: ["/api"], weight: 90}}
      web-api-go:   {{prefix: ["/api", "/api/foobar"], weight: 10}}
      web-asset:    {{prefix: ["/asset"]}}
  - domain: ["qa.example.com"]
    cluster:
      web-qa: {{prefix: ["/"]}}
cluster:
  loadbalancer: {{web-api-perl: {{}}, web-api-go: {{}}, web-asset: {{}}, web-qa: {{}}}}
versions:
  web-api:
    default: perl
    clusters: {{perl: web-api-perl, go: web-api-go}}
    pin: {{trust: cidr, trusted-cidrs: [10.0.0.0/8], cookie: jv, query: version}}
    canary: {{version: go, weight: 5, key: {{cookie: uid}}}}
experiments:
  feed:
    service: web-api
    match: {{prefix: /api/feed, methods: [GET], headers: {{x-client: ios}}}}
    sticky-cookie: {{name: jx-feed}}
    arms: {{a: {{weight: 50}}, b: {{weight: 50, version: go}}}}
  banner:
    match: {{prefix: /}}
    arms: {{shown: {{weight: 10}}}}
decision: {{transport: {transport}, failure-mode: {failure}, timeout: 0.25}}
"""


@pytest.mark.parametrize(("transport", "failure"), [("http", "open"), ("grpc", "closed")])
def test_every_decision_option_is_valid_for_envoy(transport: str, failure: str) -> None:
    config = load_config(textwrap.dedent(CONFIG.format(transport=transport, failure=failure)), "t")
    snapshot = translate(config, Catalog())
    assert check_snapshot(snapshot) == []
    envoy_validate(snapshot, bootstrap(BootstrapOptions(node_id="n", xds_port=18000, admin_port=0)))
