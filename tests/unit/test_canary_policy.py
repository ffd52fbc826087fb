"""The canary ramp section of the config (versions.<service>.canary.ramp) and policies()."""

from __future__ import annotations

import pytest

from junction.canary.policy import CanaryPolicy, policies
from junction.config.errors import ConfigError
from junction.config.load import load_config

BASE = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10%s}
"""


def load(ramp: str) -> object:
    return load_config(BASE % ramp, "c.yaml")


def test_a_canary_without_ramp_has_no_policy() -> None:
    assert policies(load_config(BASE % "", "c.yaml")) == {}


def test_ramp_defaults_and_values() -> None:
    config = load_config(BASE % ", ramp: {}", "c.yaml")
    policy = policies(config)["web-api"]
    assert policy == CanaryPolicy(
        service="web-api",
        version="go",
        baseline="web-api-perl",
        candidate="web-api-go",
        baseline_version="perl",
    )
    assert policy.steps == (1, 5, 10, 25, 50, 100)
    config = load_config(
        BASE
        % (
            ", ramp: {steps: [10, 50, 100], interval: 2.5, min-requests: 20,"
            " alpha: 0.001, margin: 2, max-error-rate: 0.2, latency-thresholds: [50, 250],"
            " latency-lookback: 60, sample-ratio-tolerance: 1.2, max-missing: 0.01}"
        ),
        "c.yaml",
    )
    policy = policies(config)["web-api"]
    assert policy.steps == (10, 50, 100)
    assert (policy.interval, policy.min_requests) == (2.5, 20)
    assert (policy.alpha, policy.margin, policy.max_error_rate) == (0.001, 2.0, 0.2)
    assert policy.latency_thresholds == (50.0, 250.0) and policy.latency_metrics == 2
    assert (policy.latency_lookback, policy.sample_ratio_tolerance) == (60.0, 1.2)
    assert policy.max_missing == 0.01
    config = load_config(BASE % ", ramp: {latency-quantiles: [0.9, 0.999]}", "c.yaml")
    policy = policies(config)["web-api"]
    assert policy.latency_quantiles == (0.9, 0.999) and policy.latency_thresholds is None


@pytest.mark.parametrize(
    ("ramp", "message"),
    [
        ("steps: [5, 5, 100]", "versions.web-api.canary.ramp.steps: must increase step by step"),
        ("steps: [5, 50]", "versions.web-api.canary.ramp.steps: must end at 100 (the promotion)"),
        (
            "steps: [0.5, 100]",
            "versions.web-api.canary.ramp.steps[0]: must be a whole percentage 1..100",
        ),
        ("steps: []", "versions.web-api.canary.ramp.steps: must list at least one step"),
        (
            "max-error-rate: 5",
            "versions.web-api.canary.ramp.max-error-rate: must be a fraction 0..1",
        ),
        (
            "max-p99-ratio: 1.5",
            "versions.web-api.canary.ramp: max-p99-ratio was removed: latency is judged by"
            " counting requests slower than the baseline's latency-quantiles",
        ),
        (
            "max-error-increase: 0.01",
            "versions.web-api.canary.ramp: max-error-increase was removed: errors are judged"
            " by an anytime-valid test",
        ),
        ("max-p99: 200", "versions.web-api.canary.ramp: max-p99 was removed: latency"),
        ("p99-slack: 200", "versions.web-api.canary.ramp: p99-slack was removed"),
        ("alpha: 0", "versions.web-api.canary.ramp.alpha: must be a probability in (0, 0.5]"),
        ("alpha: 0.7", "versions.web-api.canary.ramp.alpha: must be a probability in (0, 0.5]"),
        ("margin: 1", "versions.web-api.canary.ramp.margin: must be a ratio above 1"),
        ("max-error-rate: 0", "versions.web-api.canary.ramp.max-error-rate: must be above 0"),
        (
            "latency-quantiles: [0.99, 0.5]",
            "versions.web-api.canary.ramp: latency-quantiles must increase",
        ),
        (
            "latency-quantiles: [1.5]",
            "versions.web-api.canary.ramp.latency-quantiles[0]: must be a quantile",
        ),
        (
            "latency-thresholds: [100], latency-quantiles: [0.5]",
            "versions.web-api.canary.ramp: set latency-thresholds or latency-quantiles, not both",
        ),
        (
            "latency-thresholds: []",
            "versions.web-api.canary.ramp: latency-thresholds: list 1 to 5 values",
        ),
        ("interval: 0", "versions.web-api.canary.ramp.interval: must be a number of seconds"),
        (
            "min-requests: 0",
            "versions.web-api.canary.ramp.min-requests: must be an integer 1..10000000",
        ),
        ("windw: 5", "versions.web-api.canary.ramp.windw: unknown key"),
    ],
)
def test_bad_ramps_are_named_by_path(ramp: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(BASE % f", ramp: {{{ramp}}}", "c.yaml")
    assert message in info.value.render()


def test_policy_steps() -> None:
    policy = CanaryPolicy("s", "go", "b", "c", steps=(1, 5, 25, 100))
    assert [policy.next_weight(w) for w in (0, 1, 3, 5, 25, 99, 100)] == [
        1,
        5,
        5,
        25,
        100,
        100,
        None,
    ]
    assert [policy.step_index(w) for w in (0, 1, 3, 100)] == [-1, 0, 0, 3]
    with pytest.raises(ValueError):
        CanaryPolicy("s", "go", "b", "c", steps=(5, 1, 100))
