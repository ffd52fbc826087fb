"""``outlier-detection`` and ``slow-start`` under ``cluster.loadbalancer.NAME``: the YAML
they accept, the errors they give (by path), and the Envoy fields they become."""

from __future__ import annotations

import textwrap

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from junction.catalog.model import Catalog
from junction.config.errors import ConfigError
from junction.config.load import load_config
from junction.config.model import Config
from junction.xds.resources import CLUSTER
from junction.xds.translate import translate
from junction.xds.validate import envoy_validate

MINIMAL = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route: {domain: [example.com], cluster: {svc: {prefix: [/]}}}
cluster:
  loadbalancer:
    svc:
"""


def with_lb(body: str) -> Config:
    return load_config(MINIMAL + textwrap.indent(textwrap.dedent(body), "      "), "t.yaml")


def errors_of(body: str) -> str:
    with pytest.raises(ConfigError) as info:
        with_lb(body)
    return info.value.render()


def the_cluster(cfg: Config) -> cluster_pb2.Cluster:
    snap = translate(cfg, Catalog())
    (cluster,) = [r.message for r in snap.resources[CLUSTER].values()]
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster


def test_outlier_detection_maps_every_key() -> None:
    cluster = the_cluster(
        with_lb(
            """\
            outlier-detection:
              consecutive-5xx: 3
              consecutive-gateway-failure: 2
              interval: 0.5
              base-ejection-time: 30
              max-ejection-time: 120
              max-ejection-percent: 50
              success-rate-minimum-hosts: 3
              success-rate-request-volume: 20
              success-rate-stdev-factor: 1.5
              enforcing-success-rate: 80
            """
        )
    )
    od = cluster.outlier_detection
    assert od.consecutive_5xx.value == 3
    assert od.consecutive_gateway_failure.value == 2
    assert od.enforcing_consecutive_gateway_failure.value == 100  # Envoy's default is 0
    assert od.interval.ToMilliseconds() == 500
    assert od.base_ejection_time.seconds == 30
    assert od.max_ejection_time.seconds == 120
    assert od.max_ejection_percent.value == 50
    assert od.success_rate_minimum_hosts.value == 3
    assert od.success_rate_request_volume.value == 20
    assert od.success_rate_stdev_factor.value == 1500  # Envoy divides by 1000
    assert od.enforcing_success_rate.value == 80


def test_outlier_detection_absent_keys_keep_envoy_defaults() -> None:
    cluster = the_cluster(with_lb("outlier-detection: {consecutive-5xx: 4}\n"))
    od = cluster.outlier_detection
    assert od.consecutive_5xx.value == 4
    for unset in ("interval", "base_ejection_time", "max_ejection_percent",
                  "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure"):  # fmt: skip
        assert not od.HasField(unset), unset
    # An empty mapping still turns outlier detection on (Envoy's defaults throughout).
    assert the_cluster(with_lb("outlier-detection: {}\n")).HasField("outlier_detection")
    assert not the_cluster(with_lb("lb-policy: random\n")).HasField("outlier_detection")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "outlier-detection: {consecutive-5xx: 0}\n",
            "cluster.loadbalancer.svc.outlier-detection.consecutive-5xx: must be an integer",
        ),
        (
            "outlier-detection: {interval: -1}\n",
            "cluster.loadbalancer.svc.outlier-detection.interval: must be a number of seconds",
        ),
        (
            "outlier-detection: {max-ejection-percent: 101}\n",
            "cluster.loadbalancer.svc.outlier-detection.max-ejection-percent: must be an "
            "integer 0..100",
        ),
        (
            "outlier-detection: {consecutive-5xxx: 3}\n",
            "cluster.loadbalancer.svc.outlier-detection.consecutive-5xxx:",
        ),
        (
            "outlier-detection: {success-rate-stdev-factor: .nan}\n",
            "outlier-detection.success-rate-stdev-factor: must be a number",
        ),
        (
            "slow-start: {window: 0}\n",
            "cluster.loadbalancer.svc.slow-start.window: must be a number of seconds",
        ),
        ("slow-start: {}\n", "cluster.loadbalancer.svc.slow-start.window:"),
        (
            "slow-start: {window: 10, aggression: 0}\n",
            "cluster.loadbalancer.svc.slow-start.aggression: must be a number",
        ),
        (
            "slow-start: {window: 10, agression: 2}\n",
            "cluster.loadbalancer.svc.slow-start.agression:",
        ),
        (
            "lb-policy: ring-hash\nslow-start: {window: 10}\n",
            "slow-start works with lb-policy round-robin or least-request, not ring-hash",
        ),
    ],
)
def test_bad_values_are_named_by_path(body: str, expected: str) -> None:
    assert expected in errors_of(body)


def test_unknown_key_error_says_it_is_unknown() -> None:
    message = errors_of("outlier-detection: {consecutive-5xxx: 3}\n")
    assert "consecutive-5xxx" in message
    assert "consecutive-5xx" in message.split("consecutive-5xxx", 1)[1]  # the suggestion


def test_slow_start_round_robin_and_least_request() -> None:
    rr = the_cluster(with_lb("slow-start: {window: 30}\n"))
    config = rr.round_robin_lb_config.slow_start_config
    assert config.slow_start_window.seconds == 30
    assert not config.HasField("aggression")  # Envoy's default 1.0
    lr = the_cluster(with_lb("lb-policy: least-request\nslow-start: {window: 5, aggression: 2}\n"))
    assert lr.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    config = lr.least_request_lb_config.slow_start_config
    assert config.slow_start_window.seconds == 5
    assert config.aggression.default_value == 2.0
    assert config.aggression.runtime_key  # Envoy requires one
    assert not lr.HasField("round_robin_lb_config")


def test_envoy_accepts_the_clusters() -> None:
    """`envoy --mode validate` on a snapshot using every key (a real Envoy)."""
    cfg = with_lb(
        """\
        lb-policy: least-request
        outlier-detection: {consecutive-5xx: 3, consecutive-gateway-failure: 2, interval: 1,
          base-ejection-time: 5, max-ejection-time: 60, max-ejection-percent: 50,
          success-rate-minimum-hosts: 2, success-rate-request-volume: 10,
          success-rate-stdev-factor: 1.2, enforcing-success-rate: 90}
        slow-start: {window: 10, aggression: 1.5}
        """
    )
    envoy_validate(translate(cfg, Catalog()))
