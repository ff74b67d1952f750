"""Block standard errors, the IC's block-permutation p-value, the verdict rule and the promotion rule, pinned on
small hand-made arrays (the rules are pure functions of per-row predictions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.src.training.metrics import balanced_accuracy_rows
from ml.src.training.registry import promotion_rule
from ml.src.training.scoring import SlicePredictions, score_slice
from ml.src.training.stats import (
    PairedDifference,
    benjamini_hochberg,
    block_length,
    block_se,
    ic_with_pvalue,
    paired_difference,
)
from ml.src.training.verdict import PairedRows, Verdict, apply_fdr, densest_evidence, judge, judge_rows
from ml.src.training.weights import one_hot


def test_block_se_pins_the_formula():
    c = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 0.0])  # blocks of 2: the oldest odd row joins the first block
    sums = np.array([1.0 + 1.0 + 2.0, 2.0 + 3.0, 3.0 + 0.0])
    expected = math.sqrt(3 / 2 * ((sums - sums.mean()) ** 2).sum())
    assert block_se(c, 2) == pytest.approx(expected)
    assert block_se(c, 3) is None  # two blocks cannot estimate a spread
    assert block_length(5) == 10 and block_length(0) == 2


def test_paired_difference_and_its_decisions():
    a = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]) / 8
    b = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]) / 8
    d = paired_difference(a, b, block=2)
    assert d.diff == pytest.approx(3 / 8) and d.n == 8 and d.se is not None
    assert d.beats(0.0) and not d.loses(0.0)
    assert d.beats(d.diff / d.se * 0.99) and not d.beats(d.diff / d.se * 1.01)


def test_ic_p_value_from_block_permutations():
    rng = np.random.default_rng(0)
    r = rng.standard_normal(400)
    ic, p = ic_with_pvalue(r + 0.5 * rng.standard_normal(400), r, block=5, n_perm=500, seed=1)
    assert ic > 0.8 and p == pytest.approx(1 / 501)  # no shuffle comes close
    ic, p = ic_with_pvalue(rng.standard_normal(400), r, block=5, n_perm=500, seed=1)
    assert abs(ic) < 0.15 and p > 0.05
    s = rng.standard_normal(400)
    assert ic_with_pvalue(s, r, 5, 200, 3) == ic_with_pvalue(s, r, 5, 200, 3)  # seeded: reproducible
    assert ic_with_pvalue(np.ones(50), r[:50], 5) == (None, None)
    assert ic_with_pvalue(s[:12], r[:12], 5)[1] is None  # fewer than 4 blocks: no p-value


def _slice(y: np.ndarray, model_proba: np.ndarray, prior: np.ndarray) -> SlicePredictions:
    n = len(y)
    from ml.src.training.metrics import decide

    probas = {"ensemble": model_proba, "prior": np.tile(prior, (n, 1))}
    preds = {"ensemble": decide(model_proba, prior), "prior": decide(probas["prior"], prior)}
    preds["majority"] = preds["prior"]
    preds["persistence"] = np.roll(y, 2)
    return SlicePredictions(np.arange(n), y, np.zeros(n), probas, preds)


Y = np.tile([0, 1, 2, 1, 0, 2, 2, 1, 0, 1], 12)  # 120 hand-made labels, every class present
PRIOR = np.array([0.3, 0.4, 0.3])


def test_verdict_skill_when_clearly_better_than_both_baselines_and_the_prior():
    sharp = 0.7 * one_hot(Y) + 0.3 * np.tile(PRIOR, (len(Y), 1))
    v = judge(_slice(Y, sharp, PRIOR), horizon=2, z=2.0, basis="test")
    assert v.balanced_accuracy.diff > 0.5 and v.log_loss.diff > 0 and v.p_value < 1e-6
    # skill needs the q-value, known once the run's pairs are done; alone in its run q = p
    assert v.verdict == "no-skill" and v.q_value is None
    settled = apply_fdr({"pair": v}, fdr=0.1)["pair"]
    assert settled.verdict == "skill" and settled.q_value == pytest.approx(v.p_value)


def test_verdict_worse_when_confidently_wrong():
    wrong = one_hot((Y + 1) % 3) * 0.9 + 0.1 / 3
    v = judge(_slice(Y, wrong, PRIOR), horizon=2, z=2.0, basis="test")
    assert v.verdict == "worse" and v.log_loss.diff < 0


def test_verdict_no_skill_for_a_forecast_equal_to_the_prior():
    v = judge(_slice(Y, np.tile(PRIOR, (len(Y), 1)), PRIOR), horizon=2, z=2.0, basis="test")
    assert v.verdict == "no-skill"
    assert v.log_loss.diff == pytest.approx(0.0) and v.to_dict()["basis"] == "test"


def test_float_noise_is_neither_better_nor_worse():
    # a calibrated model that collapsed onto the class mix reaches it by another float path: seen on a real
    # pair as a log-loss gain of -2.4e-16 with a block s.e. of 2.6e-17, which once read as "worse"
    a = np.full(100, 0.011)
    d = paired_difference(a, a + 2.4e-18, block=10)  # every row the same tiny loss: s.e. ~0
    assert d.diff < 0 and d.se is not None and d.diff < -2.0 * d.se
    assert not d.loses(2.0) and not d.beats(2.0)
    assert not paired_difference(a + 2.4e-18, a, block=10).beats(2.0)


def test_score_slice_reads_like_with_like():
    sharp = 0.7 * one_hot(Y) + 0.3 * np.tile(PRIOR, (len(Y), 1))
    sp = _slice(Y, sharp, PRIOR)
    for name in ("rf", "gb", "equal_weight"):
        sp.probas[name], sp.preds[name] = sp.probas["ensemble"], sp.preds["ensemble"]
    scores = score_slice(sp, horizon=2)
    assert scores["ensemble"]["balanced_accuracy"] == 1.0
    assert scores["majority"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert scores["majority"]["log_loss"] is None and scores["prior"]["log_loss"] > 1.0
    assert set(scores["ensemble"]) >= {"log_loss", "hit_rate", "ic", "ic_pvalue", "confusion"}


def _rows(hits: np.ndarray) -> np.ndarray:
    return balanced_accuracy_rows(Y, np.where(hits, Y, (Y + 1) % 3))


def test_promotion_rule_promotes_a_clearly_better_challenger():
    rng = np.random.default_rng(5)
    champion = _rows(rng.random(len(Y)) < 0.35)
    challenger = _rows(rng.random(len(Y)) < 0.75)
    baselines = {"majority": _rows(Y == 1), "persistence": _rows(np.roll(Y, 2) == Y)}
    promote, reason, d = promotion_rule(challenger, champion, baselines, block=4, z=1.645)
    assert promote and d.diff > 1.645 * d.se, reason


def test_promotion_rule_keeps_the_champion_within_noise_and_without_the_baselines():
    rng = np.random.default_rng(6)
    base = rng.random(len(Y)) < 0.4
    flip = base.copy()
    flip[:6] = ~flip[:6]  # a few rows differ: a small difference with a comparable standard error
    promote, reason, d = promotion_rule(_rows(flip | base), _rows(base), {}, block=4, z=1.645)
    assert not promote and "not above" in reason and d.diff >= 0
    # identical models: a tie is not a win
    assert not promotion_rule(_rows(base), _rows(base), {}, block=4, z=0.0)[0]
    # clearly better than the champion but not than a baseline: kept
    good = _rows(rng.random(len(Y)) < 0.7)
    promote, reason, _ = promotion_rule(
        good, _rows(np.zeros(len(Y), bool)), {"persistence": _rows(np.ones(len(Y), bool))}, block=4, z=1.645
    )
    assert not promote and "persistence baseline" in reason


# ---- p-values, Benjamini-Hochberg q-values, the FDR rule (issue 19) ---------------------------------------------------
def test_benjamini_hochberg_pins_a_hand_computed_example():
    # sorted: 0.005, 0.01, 0.03, 0.04, 0.5 -> m p / rank = 0.025, 0.025, 0.05, 0.05, 0.5 (already monotone)
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005, 0.5]) == pytest.approx(
        [0.025, 0.05, 0.05, 0.025, 0.5]
    )
    # sorted: 0.02, 0.021, 0.6, 0.9 -> 0.08, 0.042, 0.8, 0.9; the step-up lowers the first to 0.042
    assert benjamini_hochberg([0.9, 0.02, 0.6, 0.021]) == pytest.approx([0.9, 0.042, 0.8, 0.042])
    assert benjamini_hochberg([0.3]) == [0.3] and benjamini_hochberg([]) == []
    assert benjamini_hochberg([1.0, 1.0, 0.2]) == pytest.approx([1.0, 1.0, 0.6])  # never above 1
    with pytest.raises(ValueError):
        benjamini_hochberg([0.1, float("nan")])
    # the same numbers as scipy's implementation
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(3).random(40) ** 3
    assert benjamini_hochberg(p) == pytest.approx(false_discovery_control(p, method="bh").tolist())


def test_one_sided_p_value_of_a_paired_difference():
    d = PairedDifference(diff=0.05, se=0.025, n=500, block=4)  # 2 standard errors
    assert (
        d.p_value() == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2))) == pytest.approx(0.0227501, abs=1e-7)
    )
    assert PairedDifference(-0.05, 0.025, 500, 4).p_value() == pytest.approx(1 - 0.0227501, abs=1e-7)
    assert PairedDifference(0.05, None, 5, 4).p_value() == 1.0  # too few rows for a standard error
    assert PairedDifference(1e-16, 1e-17, 100, 4).p_value() == 0.5  # float noise: no difference either way


def test_too_few_rows_give_p_one_and_never_skill():
    y = Y[:7]  # blocks of 4 rows (horizon 2): one block, no standard error
    sharp = one_hot(y) * 0.9 + 0.1 / 3
    v = judge(_slice(y, sharp, PRIOR), horizon=2, z=2.0, basis="test")
    assert v.balanced_accuracy.se is None and v.p_value == 1.0 and v.to_dict()["p_value"] == 1.0
    settled = apply_fdr({"a": v}, fdr=0.1)["a"]
    assert settled.q_value == 1.0 and settled.verdict == "no-skill"


def _verdict(diff: float, se: float) -> Verdict:
    bal = PairedDifference(diff, se, 500, 4)
    ll = PairedDifference(0.01, 0.004, 500, 4)  # better probabilities than the prior
    return Verdict("no-skill", "walk_forward", 500, 2.0, "persistence", bal, ll, bal.p_value(), fdr=0.1)


def test_a_pair_with_raw_p_below_005_but_q_above_the_fdr_reads_no_skill():
    strong = _verdict(0.05, 0.0225)  # 2.22 s.e.: the old z = 2 rule alone called it skill
    assert strong.balanced_accuracy.beats(2.0) and strong.p_value == pytest.approx(0.01313, abs=1e-5)
    # alone in its run: q = p = 0.013 <= 0.1, skill
    assert apply_fdr({"A/d1": strong}, fdr=0.1)["A/d1"].verdict == "skill"
    # beside nine pairs without an edge: q = 10 x 0.0131 = 0.131 > 0.1, no-skill
    run = {"A/d1": strong} | {f"P{i}/d1": _verdict(0.004 * (i - 8), 0.02) for i in range(9)}  # p >= 0.5
    settled = apply_fdr(run, fdr=0.1)
    a = settled["A/d1"]
    assert a.p_value < 0.05 and a.q_value == pytest.approx(10 * a.p_value) and a.q_value > 0.1
    assert a.verdict == "no-skill" and a.to_dict()["q_value"] == a.q_value and a.to_dict()["fdr"] == 0.1
    assert [settled[k].q_value for k in run] == pytest.approx(
        benjamini_hochberg([v.p_value for v in run.values()])
    )
    # a looser FDR calls it again
    assert apply_fdr(run, fdr=0.15)["A/d1"].verdict == "skill"
    # the dict form round-trips (what workers send back and the ledger keeps)
    assert Verdict.from_dict(a.to_dict()) == a


def test_worse_does_not_wait_for_q_values():
    bad = _verdict(-0.06, 0.02)
    assert bad.balanced_accuracy.loses(2.0)
    assert apply_fdr({"a": bad, "b": _verdict(0.0, 0.02)}, fdr=0.1)["a"].verdict == "worse"


def _paired(y: np.ndarray, proba: np.ndarray) -> PairedRows:
    sp = _slice(y, proba, PRIOR)
    return PairedRows.from_slice(sp)


def test_replay_rows_are_a_basis_and_the_densest_evidence_wins():
    sharp = 0.7 * one_hot(Y) + 0.3 * np.tile(PRIOR, (len(Y), 1))
    test_rows, wf_rows = _paired(Y[:40], sharp[:40]), _paired(Y[:80], sharp[:80])
    # replay rows as a replay would give them: per bar p_bearish/p_neutral/p_bullish, the realised label, the
    # baselines' calls at that bar and the class mix the forecasting model was trained on
    replay = PairedRows(
        codes=Y,
        model_proba=sharp,
        model_pred=sharp.argmax(axis=1),
        baseline_preds={"majority": np.ones(len(Y), int), "persistence": np.roll(Y, 2)},
        prior_proba=np.tile(PRIOR, (len(Y), 1)),
    )
    assert densest_evidence(test=test_rows) == ("test", test_rows)
    assert densest_evidence(test=test_rows, walk_forward=wf_rows) == ("walk_forward", wf_rows)
    assert densest_evidence(test=test_rows, walk_forward=wf_rows, replay=replay)[0] == "replay"
    basis, rows = densest_evidence(test=test_rows, walk_forward=wf_rows, replay=replay)
    v = judge_rows(rows, horizon=2, z=2.0, basis=basis, fdr=0.1)
    assert v.basis == "replay" and v.n == len(Y) and v.to_dict()["basis"] == "replay"
    # the same rows through the slice path give the same numbers
    same = judge(_slice(Y, sharp, PRIOR), horizon=2, z=2.0, basis="replay")
    assert same.balanced_accuracy == v.balanced_accuracy and same.p_value == v.p_value
    with pytest.raises(ValueError, match="unknown verdict basis"):
        judge_rows(rows, horizon=2, z=2.0, basis="live")
