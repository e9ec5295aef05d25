"""Paired statistics (monai_smia.metrics.paired): hand-computed small cases, verdicts, direction, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from monai_smia.metrics import DOES_NOT_HOLD, HOLDS, bootstrap_indices, compare_paired, paired_differences


def test_hand_computed_differences_wins_ties_losses_and_interval():
    a = {"c1": 0.5, "c2": 0.2, "c3": 0.4, "c4": 0.1}
    b = {"c1": 0.1, "c2": 0.2, "c3": 0.5, "c4": 0.0}
    cmp = compare_paired(a, b, direction="greater", tolerance=0.05, names=("A", "B"), num_resamples=500, seed=3)
    # differences (sorted case ids): +0.4, 0.0, -0.1, +0.1 -> wins c1, c4; tie c2; loss c3
    assert (cmp.wins, cmp.ties, cmp.losses) == (2, 1, 1)
    assert cmp.num_cases == 4 and cmp.num_dropped == 0
    assert cmp.mean_difference == pytest.approx(0.1)
    assert cmp.mean_a == pytest.approx(0.3) and cmp.mean_b == pytest.approx(0.2)
    # the interval is the percentile interval of the resampled mean differences, resampling pairs
    d = np.array([0.4, 0.0, -0.1, 0.1])
    means = d[bootstrap_indices(4, 500, 3)].mean(axis=1)
    assert cmp.lo == pytest.approx(np.quantile(means, 0.025)) and cmp.hi == pytest.approx(np.quantile(means, 0.975))
    assert cmp.lo < 0 < cmp.hi and cmp.verdict == DOES_NOT_HOLD  # the interval includes 0


def test_holds_only_when_the_interval_excludes_zero_in_the_claimed_direction():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=40)
    a = {f"c{i}": v for i, v in enumerate(base)}
    b = {f"c{i}": v + 0.05 + 0.01 * rng.standard_normal() for i, v in enumerate(base)}  # b higher on every case
    less = compare_paired(a, b, direction="less")
    assert less.verdict == HOLDS and less.holds and less.hi < 0
    assert less.wins == 40 and less.losses == 0
    greater = compare_paired(a, b, direction="greater")  # the same data, the opposite claim
    assert greater.verdict == DOES_NOT_HOLD and greater.wins == 0 and greater.losses == 40
    # swapping the sides flips the sign and the verdicts
    swapped = compare_paired(b, a, direction="greater")
    assert swapped.verdict == HOLDS
    assert swapped.lo == pytest.approx(-less.hi) and swapped.hi == pytest.approx(-less.lo)


def test_equal_methods_do_not_hold_and_are_all_ties():
    a = {f"c{i}": float(i) for i in range(10)}
    cmp = compare_paired(a, dict(a), direction="greater")
    assert (cmp.lo, cmp.hi) == (0.0, 0.0) and cmp.verdict == DOES_NOT_HOLD
    assert cmp.ties == 10 and cmp.wins == cmp.losses == 0


def test_paired_beats_unpaired_when_cases_vary_more_than_methods():
    """A consistent small gain over widely varying cases: the paired interval excludes 0."""
    base = np.linspace(0.0, 1.0, 30)
    a = {f"c{i}": v + 0.02 for i, v in enumerate(base)}
    b = {f"c{i}": v for i, v in enumerate(base)}
    cmp = compare_paired(a, b, direction="greater")
    assert cmp.verdict == HOLDS and cmp.lo == pytest.approx(0.02) and cmp.hi == pytest.approx(0.02)


def test_nan_cases_are_dropped_and_counted():
    a = {"x": 1.0, "y": float("nan"), "z": 3.0}
    b = {"x": 0.0, "y": 1.0, "z": 1.0}
    ids, va, vb, dropped = paired_differences(a, b)
    assert ids == ["x", "z"] and dropped == 1
    np.testing.assert_array_equal(va - vb, [1.0, 2.0])


def test_mismatched_case_ids_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"SMIA and PGD were not scored on the same cases.*only in SMIA \['c3'\]"):
        compare_paired({"c1": 1.0, "c3": 0.0}, {"c1": 1.0, "c2": 0.0}, names=("SMIA", "PGD"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"direction": "better"}, "direction"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"num_resamples": 0}, "num_resamples"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare_paired({"c": 1.0}, {"c": 0.0}, **kwargs)


def test_no_finite_case_is_refused():
    with pytest.raises(ValueError, match="no case has a finite value"):
        compare_paired({"c": float("nan")}, {"c": 0.0})


def test_set_statistic_is_paired_over_resampled_cases():
    """compare_paired_statistic: the interval is the percentile interval of statistic_a(idx) - statistic_b(idx)
    with one resample idx for both sides; W/T/L compare the statistic case by case."""
    from monai_smia.metrics.paired import compare_paired_statistic

    a = np.array([3.0, 1.0, 2.0, 0.0, 5.0])
    b = np.array([1.0, 1.0, 4.0, 0.0, 2.0])

    def share_above(values):  # a set-level statistic: the share of cases above 1.5 (not a mean of a-b)
        return lambda idx: float((values[slice(None) if idx is None else np.asarray(idx)] > 1.5).mean())

    cmp = compare_paired_statistic(share_above(a), share_above(b), 5, "greater", names=("A", "B"), num_resamples=300)
    assert (cmp.mean_a, cmp.mean_b) == (0.6, 0.4) and cmp.mean_difference == pytest.approx(0.2)
    assert (cmp.wins, cmp.ties, cmp.losses) == (1, 4, 0)  # case 0 (A above, B not); cases 2, 4: both or neither
    idx = bootstrap_indices(5, 300, 0)
    diff = np.array([(a[i] > 1.5).mean() - (b[i] > 1.5).mean() for i in idx])
    assert (cmp.lo, cmp.hi) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])))
    assert cmp.verdict == DOES_NOT_HOLD and cmp.lo <= 0  # one win in five cases: not beyond resampling noise
    strong = compare_paired_statistic(share_above(a + 2), share_above(a - 2), 5, "greater", num_resamples=300)
    assert strong.verdict == HOLDS and strong.lo > 0
    with pytest.raises(ValueError, match="direction"):
        compare_paired_statistic(share_above(a), share_above(b), 5, "bigger")
    with pytest.raises(ValueError, match="no case"):
        compare_paired_statistic(share_above(a), share_above(b), 0)
