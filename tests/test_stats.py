"""Paired comparisons (training/stats.py): the bootstrap CI of a mean difference and the promotion gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.domain import Episode, Task
from training.stats import (
    MIN_TASKS,
    compare_episodes,
    expanded_tail,
    gate,
    matched_pairs,
    paired_bootstrap,
    student_t_upper_quantile,
)


def task(name: str) -> Task:
    return Task(id=name, kind="backend", problem_description=f"Task {name}.", ground_truth="def f(): pass")


def episode(name: str, reward, sample: int = 0, **scores) -> Episode:
    return Episode(task=task(name), reward=reward, scores=scores, meta={"sample": sample})


def test_the_ci_covers_the_true_mean_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    true_gain, covered, trials = 0.1, 0, 200
    for trial in range(trials):
        baseline = rng.uniform(0, 1, size=40)
        candidate = baseline + true_gain + rng.normal(0, 0.3, size=40)
        d = paired_bootstrap(candidate, baseline, resamples=2000, seed=trial)
        assert d.low < d.mean < d.high
        covered += d.low <= true_gain <= d.high
    assert 0.90 <= covered / trials <= 0.99, covered
    # One known case in full: the mean is the mean of the pair differences, the CI about ±2 SE.
    baseline = rng.uniform(0, 1, size=200)
    differences = true_gain + rng.normal(0, 0.3, size=200)
    d = paired_bootstrap(baseline + differences, baseline)
    assert d.n == d.tasks == 200 and d.mean == pytest.approx(differences.mean())
    assert d.low < true_gain < d.high
    assert d.high - d.low == pytest.approx(2 * 1.96 * differences.std() / math.sqrt(200), rel=0.1)


def test_identical_sides_give_a_zero_ci_and_no_gain():
    values = [0.0, 1.0, 0.5, 1.0, 0.0, 0.25, 1.0, 0.0]
    d = paired_bootstrap(values, values, groups=list("aabbccdd"))
    assert (d.mean, d.low, d.high, d.n, d.tasks) == (0.0, 0.0, 0.0, 8, 4)
    decision = gate(d, margin=0.0)
    assert not decision.promote and decision.verdict == "no gain"
    assert decision.reason.startswith("no gain: n=8, CI [0.000, 0.000]")


def test_the_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=30), rng.uniform(size=30)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    other = paired_bootstrap(a, b, seed=4)
    assert other.mean == paired_bootstrap(a, b, seed=3).mean and other.low != paired_bootstrap(a, b, seed=3).low


def test_resampling_tasks_gives_a_wider_ci_than_resampling_episodes_when_samples_correlate():
    # 10 tasks x 4 samples: each task's samples share most of their difference (a task effect).
    rng = np.random.default_rng(1)
    task_effect = np.repeat(rng.normal(0, 0.4, size=10), 4)
    baseline = rng.uniform(0, 1, size=40)
    candidate = baseline + 0.05 + task_effect + rng.normal(0, 0.05, size=40)
    groups = np.repeat([f"t{i}" for i in range(10)], 4)
    by_task = paired_bootstrap(candidate, baseline, groups)
    by_episode = paired_bootstrap(candidate, baseline)
    assert by_task.tasks == 10 and by_episode.tasks == 40 and by_task.mean == pytest.approx(by_episode.mean)
    # 40 correlated samples hold about as much information as 10: the CI is about twice as wide.
    assert (by_task.high - by_task.low) > 1.6 * (by_episode.high - by_episode.low)


def test_bad_input_raises_a_clear_error():
    with pytest.raises(ValueError, match="no matched pairs"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="3 candidate values but 2 baseline values"):
        paired_bootstrap([1, 0, 1], [0, 1])
    with pytest.raises(ValueError, match="2 group labels for 3 pairs"):
        paired_bootstrap([1, 0, 1], [0, 1, 1], groups=["a", "b"])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1], [0], confidence=95)
    with pytest.raises(ValueError, match="no matched pairs"):  # nothing in common
        compare_episodes([episode("a", 1.0)], [episode("b", 0.0)])
    with pytest.raises(ValueError, match="two baseline episodes of task 'a', sample 0"):
        matched_pairs([episode("a", 1.0)], [episode("a", 0.0), episode("a", 1.0)])


def test_episodes_pair_by_task_and_sample_whatever_their_order():
    ours = [episode("b", 1.0, sample=1, success=True), episode("a", 0.5, success=False),
            episode("b", 0.0, sample=0, success=False), episode("c", float("nan")), episode("d", 1.0)]
    theirs = [episode("b", 0.0, sample=0, success=False), episode("b", 1.0, sample=1, success=True),
              episode("a", 1.0, success=True), episode("c", 0.0)]  # d has no partner, c is unscored on our side
    candidate, baseline, tasks = matched_pairs(ours, theirs)
    assert sorted(zip(tasks, candidate, baseline)) == [("a", 0.5, 1.0), ("b", 0.0, 0.0), ("b", 1.0, 1.0)]
    assert matched_pairs(ours, theirs, "success")[:2] == ([1.0, 0.0, 0.0], [1.0, 1.0, 0.0])  # bools are 0/1
    d = compare_episodes(ours, theirs)
    assert (d.n, d.tasks, d.mean) == (3, 2, pytest.approx(-0.5 / 3))


def test_student_t_quantiles_match_the_tables():
    for df, expected in [(1, 12.706), (2, 4.303), (5, 2.571), (7, 2.365), (10, 2.228), (30, 2.042)]:
        assert student_t_upper_quantile(0.025, df) == pytest.approx(expected, abs=1e-3)
    # The expanded percentile: far into the tails on few tasks, the plain 2.5% on many.
    assert expanded_tail(0.95, 8) == pytest.approx(0.0057, abs=2e-4)
    assert expanded_tail(0.95, 1) == 0.0 and 0.0245 < expanded_tail(0.95, 2000) < 0.025


def test_the_gate_promotes_a_clear_gain_and_calls_noise_underpowered():
    rng = np.random.default_rng(2)
    baseline = rng.uniform(0, 0.5, size=24)
    clear = gate(paired_bootstrap(baseline + 0.3 + rng.normal(0, 0.05, size=24), baseline), margin=0.1)
    assert clear.promote and clear.verdict == "promote" and clear.difference.low > 0.1
    assert clear.reason.startswith("promote: n=24, CI [")

    # 8 episodes of 0/1 success: 3 wins, 2 losses, 3 ties. Nothing can be told.
    candidate, parent = [1, 1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]
    noisy = gate(paired_bootstrap(candidate, parent), margin=0.0)
    d = noisy.difference
    assert not noisy.promote and noisy.verdict == "underpowered" and d.low < 0 < d.high
    assert noisy.reason.startswith(f"underpowered: n=8, CI [{d.low:.3f}, {d.high:.3f}]")

    worse = gate(paired_bootstrap([0.0] * 8, [1.0] * 8), margin=0.0)
    assert not worse.promote and worse.verdict == "no gain" and worse.reason.startswith("no gain: n=8, CI [-1.000")


def test_a_unanimous_gain_on_too_few_tasks_is_underpowered():
    # Better on each of 3 tasks: the bootstrap of a constant difference has zero width, but three
    # coin flips all landing the same way happen one time in four.
    d = paired_bootstrap([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert (d.low, d.high) == (1.0, 1.0)
    decision = gate(d, margin=0.0)
    assert not decision.promote and decision.verdict == "underpowered"
    assert f"fewer than {MIN_TASKS} tasks" in decision.reason
    assert gate(paired_bootstrap([1.0] * MIN_TASKS, [0.0] * MIN_TASKS)).promote


def test_pure_noise_is_promoted_at_most_about_the_nominal_rate_on_few_tasks():
    # The candidate is no better: each pair's 0/1 outcome differs by chance, symmetrically. With
    # the plain percentile interval this promoted 3-7% of such candidates on 6-8 tasks.
    rng = np.random.default_rng(3)
    for tasks, discordant in [(6, 0.6), (8, 0.3), (8, 0.6)]:
        promoted = 0
        for trial in range(400):
            differences = rng.choice([-1.0, 0.0, 1.0], size=tasks, p=[discordant / 2, 1 - discordant, discordant / 2])
            promoted += gate(paired_bootstrap(differences, np.zeros(tasks), resamples=2000, seed=trial)).promote
        assert promoted / 400 <= 0.035, (tasks, discordant, promoted)
