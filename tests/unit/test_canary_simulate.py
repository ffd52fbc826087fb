"""`junction canary simulate`: the live controller against synthetic traffic that follows
its weights. Seeded: the same seed gives the same runs, however they are spread over
processes; the rates it reports hold the policy's promises over enough runs to mean it."""

from __future__ import annotations

import io
import math

import orjson
import pytest

from junction.canary.offline_cli import run_simulate, share
from junction.canary.simulate import (
    Rate,
    RunOutcome,
    Simulation,
    Traffic,
    min_ramp_seconds,
    run_once,
    simulate,
    single_ramp,
    summarize,
)
from junction.cli import _parser, main
from junction.config.load import load_config

CONFIG_TEXT = """\
listener: {listen: {address: 127.0.0.1, port: 8000}}
route:
  domain: [example.com]
  cluster:
    web-api-perl: {prefix: [/api], weight: 90}
    web-api-go: {prefix: [/api], weight: 10}
    cart-a: {prefix: [/cart], weight: 100}
    cart-b: {prefix: [/cart], weight: 0}
versions:
  web-api:
    default: perl
    clusters: {perl: web-api-perl, go: web-api-go}
    canary: {version: go, weight: 10, ramp: {steps: [20, 50, 100], interval: 10, latency-lookback: 10}}
  cart:
    default: a
    clusters: {a: cart-a, b: cart-b}
    canary: {version: b, weight: 0, ramp: {steps: [10, 100], interval: 30}}
"""
CONFIG = load_config(CONFIG_TEXT, "c.yaml")


def sim(candidate_error: float, *, baseline_error: float = 0.01, **kw: float) -> Simulation:
    traffic = Traffic(rps=200, baseline_error=baseline_error, candidate_error=candidate_error, **kw)
    return Simulation(CONFIG, "web-api", traffic)


def test_the_same_seed_gives_the_same_runs_whatever_the_workers() -> None:
    one = simulate(sim(0.05), 6, seed=11)
    assert simulate(sim(0.05), 6, seed=11) == one
    assert simulate(sim(0.05), 6, seed=11, workers=2) == one
    assert simulate(sim(0.05), 6, seed=12) != one
    assert run_once(sim(0.05), 3) == run_once(sim(0.05), 3)


def test_a_run_ends_at_a_decision_or_its_limit() -> None:
    _, policy = single_ramp(CONFIG, "web-api")
    assert min_ramp_seconds(policy) == 20.0
    bad = run_once(sim(0.5), 1)
    assert bad.outcome == "rollback" and 0 < bad.seconds <= 20 and bad.candidate_requests > 0
    quiet = run_once(Simulation(CONFIG, "web-api", Traffic(0.01, 0.0, 0.0), max_seconds=20), 1)
    assert quiet.outcome == "undecided" and quiet.seconds == 20.0  # no traffic: never promoted


def test_single_ramp_names_the_ramps() -> None:
    with pytest.raises(ValueError, match="ramps: cart, web-api"):
        single_ramp(CONFIG, None)
    with pytest.raises(ValueError, match="'nope' has no canary ramp"):
        single_ramp(CONFIG, "nope")
    reduced, policy = single_ramp(CONFIG, "cart")
    assert list(reduced.versions) == ["cart"] and policy.steps == (10, 100)


def test_summary_rates_and_intervals() -> None:
    outcomes = [RunOutcome("rollback", 10.0 * i, 100 * i, 0) for i in range(1, 11)]
    outcomes += [RunOutcome("promoted", 300.0, 5000, 2)] * 30
    s = summarize(outcomes)
    assert s.runs == 40 and s.rates["rollback"].count == 10
    assert s.rates["rollback"] == Rate.of(10, 40)
    low, high = s.rates["rollback"].low, s.rates["rollback"].high
    assert (round(low, 4), round(high, 4)) == (0.1419, 0.4019)  # Wilson, 10 of 40 (by hand: 0.2719 +- 0.1300)
    assert s.seconds["rollback"] == (55.0, 91.0)  # median, p90 (linear interpolation)
    assert s.seconds["undecided"] is None and s.rates["undecided"].count == 0


@pytest.mark.timeout(900)  # ~25 s of CPU; a loaded machine stretches it
def test_aa_false_rollbacks_stay_under_alpha_and_a_bad_candidate_is_caught() -> None:
    """300 seeded A/A ramps at 1 % errors: false rollbacks at most alpha (0.05) plus three
    standard errors (the old threshold rule rolled back most of them); 100 ramps of a
    candidate at 30 % errors against 1 %: rolled back in all but a few."""
    runs = 300
    aa = summarize(simulate(sim(0.01), runs, seed=2026))
    alpha = 0.05
    assert aa.rates["rollback"].share <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    bad = summarize(simulate(sim(0.30), 100, seed=2026))
    assert bad.rates["rollback"].share >= 0.95
    seconds = bad.seconds["rollback"]
    assert seconds is not None and seconds[1] <= 2 * 10  # p90 within two intervals


def test_cli_text_and_json(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text(CONFIG_TEXT)
    argv = [
        "canary",
        "simulate",
        "-c",
        str(path),
        "--service",
        "web-api",
        "--baseline-error",
        "1%",
        "--candidate-error",
        "0.3",
        "--rps",
        "200",
        "--runs",
        "4",
        "--seed",
        "5",
    ]
    out = io.StringIO()
    assert run_simulate(_parser().parse_args([*argv, "--json"]), out) == 0
    body = orjson.loads(out.getvalue())
    assert body["service"] == "web-api" and body["runs"] == 4
    assert body["traffic"]["baseline_error"] == 0.01 and body["traffic"]["candidate_error"] == 0.3
    assert body["rollback"]["count"] + body["promoted"]["count"] + body["undecided"]["count"] == 4
    assert {"share", "low", "high", "seconds", "candidate_requests"} <= set(body["rollback"])
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "web-api: 4 simulated ramps" in text and "rollback" in text and "[95% CI" in text
    # Bad input: exit 2 from argparse, or 1 naming the problem.
    with pytest.raises(SystemExit) as exc:
        main([*argv[:7], "150%", *argv[8:]])
    assert exc.value.code == 2
    assert "not a share between 0 and 1" in capsys.readouterr().err
    assert main([*argv[:5], "nope", *argv[6:]]) == 1
    assert "'nope' has no canary ramp" in capsys.readouterr().err


def test_share_parses_fractions_and_percents() -> None:
    assert share("0.05") == 0.05 and share("5%") == 0.05 and share("0") == 0.0
    for bad in ("-0.1", "1.5", "x", "nan"):
        with pytest.raises(Exception, match="share"):
            share(bad)
