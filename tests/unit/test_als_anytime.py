"""`junction report`'s anytime-valid p-values: known values, validity under repeated looks
(seeded A/A, against the fixed-horizon z-test re-run at every look), and the report column."""

from __future__ import annotations

import argparse
import io
import math
import random
from pathlib import Path

import numpy as np
import orjson

from junction.als.anytime import BUCKET_SECONDS, anytime_p
from junction.als.record import LogRecord
from junction.als.report import run
from junction.als.sinks import JsonLinesSink
from junction.als.stats import two_proportion_z


def by_hand(buckets: list[tuple[int, int, int, int]]) -> float:
    """The two-sided mixture written out: per grid ratio r, per bucket with arm share s,
    the arm's x and control's y errors contribute (theta/s)^x ((1-theta)/(1-s))^y with
    theta = s r / (s r + 1 - s); p = 1 / max over looks of the mean over r (at least 1)."""
    ratios = [*np.geomspace(1.1, 20.0, 24), *(1 / np.geomspace(1.1, 20.0, 24))]
    log_l = [0.0] * len(ratios)
    best = 1.0
    for n_a, x, n_c, y in buckets:
        s = n_a / (n_a + n_c)
        for j, r in enumerate(ratios):
            theta = s * r / (s * r + 1 - s)
            log_l[j] += x * math.log(theta / s) + y * math.log((1 - theta) / (1 - s))
        best = max(best, sum(math.exp(v) for v in log_l) / len(ratios))
    return min(1.0, 1 / best)


def test_known_values() -> None:
    # No difference at all: the e-process never rises above 1.
    same = {0: (1000, 10), 1: (1000, 10)}
    assert anytime_p(same, same) == 1.0
    # Nothing to compare (no common bucket): no evidence.
    assert anytime_p({0: (10, 5)}, {1: (10, 0)}) == 1.0
    cases = [
        [(1000, 30, 1000, 10)],
        [(500, 12, 1500, 10), (400, 9, 1600, 12), (600, 20, 1400, 11)],
        [(1000, 2, 1000, 15), (1000, 1, 1000, 14)],  # the arm better: two-sided
    ]
    for buckets in cases:
        arm = {i: (b[0], b[1]) for i, b in enumerate(buckets)}
        ctrl = {i: (b[2], b[3]) for i, b in enumerate(buckets)}
        assert math.isclose(anytime_p(arm, ctrl), by_hand(buckets), rel_tol=1e-9)
    # 30 vs 10 errors of 1000 each: the z-test says p = 0.0014 for one look; the
    # anytime p pays for looking any number of times, so it is larger, still under 0.05.
    p_any = anytime_p({0: (1000, 30)}, {0: (1000, 10)})
    assert two_proportion_z(30, 1000, 10, 1000)[1] < p_any < 0.05
    # At share 1/2 each ratio's likelihood ratio is 2^40 r^30 / (1 + r)^40; their mean over
    # the 48 grid ratios is 28.56, so p = 1 / 28.56 = 0.0350.
    assert math.isclose(p_any, 0.0350, abs_tol=1e-4)


def test_a_look_every_bucket_keeps_alpha_where_the_z_test_does_not() -> None:
    """400 seeded A/A experiments (1 % errors, 30 daily looks of 2,000 requests per arm):
    the share ever significant at 0.05 is at most alpha + 3 standard errors for the
    anytime p, while the z-test re-run at every look fails that bound."""
    rng = np.random.default_rng(20260101)
    runs, looks, alpha = 400, 30, 0.05
    anytime_hits = z_hits = 0
    for _ in range(runs):
        arm = {b: (2000, int(rng.binomial(2000, 0.01))) for b in range(looks)}
        ctrl = {b: (2000, int(rng.binomial(2000, 0.01))) for b in range(looks)}
        anytime_hits += anytime_p(arm, ctrl) < alpha  # max over looks is built in
        xa = xc = 0
        for b in range(looks):
            xa, xc = xa + arm[b][1], xc + ctrl[b][1]
            if two_proportion_z(xa, 2000 * (b + 1), xc, 2000 * (b + 1))[1] < alpha:
                z_hits += 1
                break
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert anytime_hits / runs <= bound
    assert z_hits / runs > bound  # the negative control: peeking inflates the z-test


def test_the_report_shows_the_anytime_column(tmp_path: Path) -> None:
    rng = random.Random(5)
    records = []
    for i in range(20_000):
        arm = "treatment" if i % 2 else "control"
        bad = rng.random() < (0.05 if arm == "treatment" else 0.01)
        t = 1_767_225_600.0 + i * 0.05  # 1,000 s: 17 buckets
        records.append(
            LogRecord(
                t,
                "n",
                "/api",
                "c",
                500 if bad else 200,
                3.0,
                False,
                "GET",
                "h",
                "/",
                f"exp=feed:{arm}",
                "",
            )
        )
    log = tmp_path / "access.jsonl"
    sink = JsonLinesSink(str(log))
    sink.write(records)
    sink.close()
    args = argparse.Namespace(
        log=[str(log)], events=[], png=None, control="control", alpha=0.05, json=True
    )
    out = io.StringIO()
    assert run(args, out) == 0
    comp = orjson.loads(out.getvalue())["experiments"]["feed"]["comparisons"]["treatment"]
    assert comp["anytime_error_p"] < 1e-6 and comp["errors_significant_anytime"] is True
    assert BUCKET_SECONDS == 60.0
    args.json = False
    out = io.StringIO()
    run(args, out)
    assert "anytime p=" in out.getvalue() and "anytime-valid p of the error rates" in out.getvalue()
