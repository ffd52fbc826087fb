"""Per-cluster load-balancing extras: outlier detection and slow start (warm-up).

Pure, like the rest of translation. :func:`junction.xds.translate_cluster.build_cluster`
calls :func:`apply_lb_extras` on every cluster it builds.

Mapping (YAML under ``cluster.loadbalancer.<name>`` -> Envoy v3 ``Cluster``):

``outlier-detection`` -> ``outlier_detection`` (``config.cluster.v3.OutlierDetection``);
an absent key keeps Envoy's default:

=================================== ========================================== =============
``consecutive-5xx``                  ``consecutive_5xx``                        5
``consecutive-gateway-failure``      ``consecutive_gateway_failure`` and        5, and off
                                     ``enforcing_consecutive_gateway_failure``
                                     = 100 (Envoy enforces it 0 % by default,
                                     which would make the key do nothing)
``interval`` (s)                     ``interval``: how often ejections are      10 s
                                     reviewed and success rates computed
``base-ejection-time`` (s)           ``base_ejection_time``; an ejection lasts  30 s
                                     it times the number of ejections
``max-ejection-time`` (s)            ``max_ejection_time``                      300 s
``max-ejection-percent``             ``max_ejection_percent`` (Envoy ejects at  10
                                     least one host whatever the value)
``success-rate-minimum-hosts``       ``success_rate_minimum_hosts``             5
``success-rate-request-volume``      ``success_rate_request_volume``            100
``success-rate-stdev-factor``        ``success_rate_stdev_factor`` (x 1000:     1.9
                                     Envoy takes 1900 for 1.9)
``enforcing-success-rate``           ``enforcing_success_rate``                 100
=================================== ========================================== =============

Consecutive-5xx ejection happens as soon as the count is reached; success-rate ejection at
the next ``interval``. An ejected host shows in Envoy's admin ``/clusters`` with the
``failed_outlier_check`` health flag, which :mod:`junction.envoy_admin` reads for /healthz
(Envoy docs, "Outlier detection"; api v3 ``config/cluster/v3/outlier_detection.proto``).

``slow-start: {window, aggression}`` -> ``round_robin_lb_config.slow_start_config`` or
``least_request_lb_config.slow_start_config`` (``Cluster.SlowStartConfig``): a host new to
the cluster (or newly healthy again) gets weight ``weight * max(min_weight, t/window) **
(1/aggression)`` until ``window`` has passed, so its share ramps up instead of it getting
its full share of requests while its caches and JIT are cold. ``aggression`` absent:
Envoy's default 1.0 (linear). Validation refuses slow-start with other lb policies (Envoy
implements it for these two only). Envoy docs, "Slow start mode".
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from junction.config.model import LoadBalancer, OutlierDetection, SlowStart

__all__ = ["apply_lb_extras", "outlier_detection", "slow_start_config"]


def apply_lb_extras(cluster: cluster_pb2.Cluster, lb: LoadBalancer) -> None:
    """Add ``lb``'s outlier detection and slow start to ``cluster`` (in place)."""
    if lb.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(lb.outlier_detection))
    if lb.slow_start is not None:
        config = slow_start_config(lb.slow_start, cluster.name)
        if lb.lb_policy == "least-request":
            cluster.least_request_lb_config.slow_start_config.CopyFrom(config)
        else:  # round-robin: validation allows no other policy with slow-start
            cluster.round_robin_lb_config.slow_start_config.CopyFrom(config)


def duration(seconds: float) -> duration_pb2.Duration:
    """As :func:`junction.xds.translate_cluster.duration` (which imports this module)."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1_000_000_000))
    return d


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def outlier_detection(od: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """``Cluster.outlier_detection`` for ``od``; unset keys stay unset (Envoy's defaults)."""
    out = outlier_detection_pb2.OutlierDetection()
    if od.consecutive_5xx is not None:
        out.consecutive_5xx.CopyFrom(_u32(od.consecutive_5xx))
    if od.consecutive_gateway_failure is not None:
        out.consecutive_gateway_failure.CopyFrom(_u32(od.consecutive_gateway_failure))
        # Envoy's default enforcement for gateway failures is 0 %: detected, never ejected.
        out.enforcing_consecutive_gateway_failure.CopyFrom(_u32(100))
    if od.interval is not None:
        out.interval.CopyFrom(duration(od.interval))
    if od.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration(od.base_ejection_time))
    if od.max_ejection_time is not None:
        out.max_ejection_time.CopyFrom(duration(od.max_ejection_time))
    if od.max_ejection_percent is not None:
        out.max_ejection_percent.CopyFrom(_u32(od.max_ejection_percent))
    if od.success_rate_minimum_hosts is not None:
        out.success_rate_minimum_hosts.CopyFrom(_u32(od.success_rate_minimum_hosts))
    if od.success_rate_request_volume is not None:
        out.success_rate_request_volume.CopyFrom(_u32(od.success_rate_request_volume))
    if od.success_rate_stdev_factor is not None:
        # "This factor is divided by a thousand to get a double" (outlier_detection.proto).
        out.success_rate_stdev_factor.CopyFrom(_u32(round(od.success_rate_stdev_factor * 1000)))
    if od.enforcing_success_rate is not None:
        out.enforcing_success_rate.CopyFrom(_u32(od.enforcing_success_rate))
    return out


def slow_start_config(ss: SlowStart, cluster: str) -> cluster_pb2.Cluster.SlowStartConfig:
    """``SlowStartConfig`` for ``ss``; the aggression is a RuntimeDouble, whose runtime key
    (required by Envoy) is named after the cluster so an operator could override it."""
    config = cluster_pb2.Cluster.SlowStartConfig(slow_start_window=duration(ss.window))
    if ss.aggression is not None:
        config.aggression.CopyFrom(
            base_pb2.RuntimeDouble(
                default_value=ss.aggression,
                runtime_key=f"junction.{cluster}.slow_start_aggression",
            )
        )
    return config
