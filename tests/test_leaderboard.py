"""Leaderboard: Bradley–Terry fit, bootstrap intervals, automatic scores and the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
from app_process import REPO

from collab_app.leaderboard import (
    ELO_ANCHOR,
    Battle,
    bootstrap_intervals,
    fit_ratings,
    format_table,
    leaderboard,
    left_out_note,
    ratings_figure,
    stored_battles,
)
from simulators.domain import Episode, Task, Turn
from simulators.store import SessionStore
from simulators.trajectories import write_episodes

TRUE_RATINGS = {"alpha": 1150.0, "beta": 1050.0, "gamma": 950.0, "delta": 850.0}  # mean 1000
TASK = Task(id="t", kind="backend", problem_description="Identity.", ground_truth="def f(x):\n    return x",
            test_cases={"test1": "f(1)"})


def synthetic_battles(n: int, seed: int) -> list[Battle]:
    """Random pairings whose outcomes follow the Elo-scale Bradley–Terry model of TRUE_RATINGS."""
    rng = np.random.default_rng(seed)
    models = list(TRUE_RATINGS)
    battles = []
    for _ in range(n):
        a, b = rng.choice(models, 2, replace=False)
        p_a = 1 / (1 + 10 ** ((TRUE_RATINGS[b] - TRUE_RATINGS[a]) / 400))
        battles.append(Battle(str(a), str(b), "a" if rng.random() < p_a else "b"))
    return battles


def test_the_fit_recovers_a_known_ordering_and_the_intervals_cover_the_truth():
    battles = synthetic_battles(3000, seed=7)
    ratings = fit_ratings(battles)
    assert sorted(ratings, key=ratings.get, reverse=True) == list(TRUE_RATINGS)
    assert math.isclose(sum(ratings.values()) / len(ratings), ELO_ANCHOR)
    intervals = bootstrap_intervals(battles, rounds=300, seed=1)
    for model, truth in TRUE_RATINGS.items():
        lower, upper = intervals[model]
        assert lower <= ratings[model] <= upper
        assert lower <= truth <= upper, (model, truth, intervals[model])
        assert upper - lower < 80  # 3000 votes pin each rating down to a few dozen points


def test_fewer_votes_give_wider_intervals_and_ties_count_half():
    narrow = bootstrap_intervals(synthetic_battles(3000, seed=2), rounds=200)
    wide = bootstrap_intervals(synthetic_battles(150, seed=2), rounds=200)
    assert all(wide[m][1] - wide[m][0] > narrow[m][1] - narrow[m][0] for m in TRUE_RATINGS)
    # One win and one loss, or two ties (both-bad is a tie too), all say the two are equal.
    for votes in (["a", "b"], ["tie", "tie"], ["both_bad", "tie"]):
        ratings = fit_ratings([Battle("x", "y", w) for w in votes])
        assert math.isclose(ratings["x"], ratings["y"])
    # A win and a tie put x ahead; an unbeaten model stays finite thanks to the prior.
    ratings = fit_ratings([Battle("x", "y", "a"), Battle("y", "x", "tie")] + [Battle("x", "z", "a")] * 20)
    assert ratings["x"] > ratings["y"] and all(math.isfinite(r) for r in ratings.values())
    assert fit_ratings([Battle("x", "x", "a")]) == {}  # a model against itself tells nothing


def compare_vote(store: SessionStore, model_a: str, model_b: str, winner: str, final: bool,
                 blind: bool = True) -> None:
    session = store.create_session(TASK, mode="compare", human="person:t", model_version=model_a)
    store.add_feedback(session, "vote", payload={"final": final, "winner": winner, "model_a": model_a,
                                                 "model_b": model_b, "blind": blind})


def scored_session(store: SessionStore, model: str, reward: float, success: bool) -> None:
    session = store.create_session(TASK, mode="human", human="person:t", model_version=model)
    store.finish_session(session, answer="x", reward=reward, scores={"success": success})


def test_leaderboard_joins_votes_with_stored_and_heldout_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_HOME", str(tmp_path))  # an empty model registry
    store = SessionStore(tmp_path / "db.sqlite")
    for _ in range(3):
        compare_vote(store, "v2", "v1", "a", final=True)
    compare_vote(store, "v1", "v2", "tie", final=True)
    compare_vote(store, "v1", "v2", "a", final=False)  # a round vote: only in the round/all tables
    scored_session(store, "v1", 0.5, False)
    scored_session(store, "v1", 1.0, True)
    store.create_session(TASK, mode="human", human="person:t", model_version="v3")  # not scored: not listed
    rollouts = tmp_path / "heldout.jsonl"
    write_episodes([Episode(TASK, [Turn("human", "Sum.")], answer="x", reward=r, agent_model="v2",
                            scores={"success": r == 1.0}) for r in (1.0, 0.0, 1.0, 1.0)], rollouts)

    assert len(stored_battles(store, "final")) == 4 and len(stored_battles(store, "all")) == 5
    rows = leaderboard(store, rollout_files=[rollouts], bootstrap_rounds=100)
    assert [r.model for r in rows] == ["v2", "v1"]
    v2, v1 = rows
    assert (v2.wins, v2.ties, v2.losses, v2.battles) == (3, 1, 0, 4)
    assert v2.lower <= v2.rating <= v2.upper and v2.rating > v1.rating
    assert (v1.sessions, v1.mean_reward, v1.success_rate) == (2, 0.75, 0.5)
    assert (v2.heldout_episodes, v2.heldout_reward, v2.heldout_success_rate) == (4, 0.75, 0.75)
    table = format_table(rows)
    assert table.splitlines()[0].startswith("rank") and "3-1-0" in table
    figure = ratings_figure(rows)
    figure.savefig(tmp_path / "ratings.png")
    assert (tmp_path / "ratings.png").stat().st_size > 1000


def test_a_trained_version_brings_its_evaluation_gate_scores(tmp_path, monkeypatch):
    from simulators.llm.registry import ModelRegistry

    monkeypatch.setenv("COLLAB_HOME", str(tmp_path))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    gate = {"new": {"n": 8, "reward": 0.625, "success_rate": 0.5}, "parent": {"n": 8, "reward": 0.5}}
    version = ModelRegistry().register(adapter, base="default", algorithm="sweet", metrics={"evaluation": gate})
    store = SessionStore(tmp_path / "db.sqlite")
    compare_vote(store, f"registry:{version.id}", "default", "a", final=True)

    rows = {r.model: r for r in leaderboard(store, bootstrap_rounds=10)}
    trained = rows[f"registry:{version.id}"]
    assert (trained.heldout_episodes, trained.heldout_reward, trained.heldout_success_rate) == (8, 0.625, 0.5)
    assert trained.wins == 1 and rows["default"].heldout_episodes == 0


def test_cli_prints_the_table_and_saves_the_plot(tmp_path):
    env = {**os.environ, "COLLAB_HOME": str(tmp_path)}  # an empty model registry
    db = tmp_path / "db.sqlite"
    store = SessionStore(db)
    compare_vote(store, "model-one", "model-two", "b", final=True)
    compare_vote(store, "model-one", "model-two", "both_bad", final=True)
    run = subprocess.run([sys.executable, "-m", "collab_app", "leaderboard", "--db", str(db), "--bootstrap", "50",
                          "--plot", str(tmp_path / "plot.png")], cwd=REPO, capture_output=True, text=True,
                         check=True, env=env)
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "model", "rating"]
    assert lines[1].split()[:2] == ["1", "model-two"] and "1-1-0" in lines[1]
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    as_json = subprocess.run([sys.executable, "-m", "collab_app", "leaderboard", "--db", str(db), "--json",
                              "--bootstrap", "0"], cwd=REPO, capture_output=True, text=True, check=True, env=env)
    assert [r["model"] for r in json.loads(as_json.stdout)] == ["model-two", "model-one"]


def test_collapsed_outcomes_fit_as_the_votes_do_and_a_large_arena_is_fast():
    """4,000 votes of one pair are two unique outcomes: the rating gap is the closed form
    400 log10(wins / losses) (the weak prior moves it by well under a point)."""
    import time

    battles = [Battle("x", "y", "a")] * 3000 + [Battle("y", "x", "a")] * 1000
    ratings = fit_ratings(battles)
    assert abs((ratings["x"] - ratings["y"]) - 400 * math.log10(3)) < 1.0
    many = synthetic_battles(100_000, seed=3)
    started = time.perf_counter()
    intervals = bootstrap_intervals(many, rounds=200, seed=0)
    assert time.perf_counter() - started < 20  # one fit per resample of at most 12 unique outcomes
    assert all(lower < TRUE_RATINGS[m] < upper for m, (lower, upper) in intervals.items())


def test_votes_that_were_not_blind_are_left_out_unless_asked_for_and_the_note_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_HOME", str(tmp_path))
    store = SessionStore(tmp_path / "db.sqlite")
    compare_vote(store, "v2", "v1", "a", final=True)  # an arena battle
    for _ in range(3):
        compare_vote(store, "v1", "v2", "a", final=True, blind=False)  # the person chose both models
    assert len(stored_battles(store)) == 1 and len(stored_battles(store, include_unblind=True)) == 4
    blind = {r.model: r for r in leaderboard(store, bootstrap_rounds=10)}
    assert (blind["v2"].wins, blind["v2"].battles) == (1, 1)
    everything = {r.model: r for r in leaderboard(store, bootstrap_rounds=10, include_unblind=True)}
    assert (everything["v1"].wins, everything["v1"].battles) == (3, 4)
    assert "3 vote(s) of the “choose two models” mode left out" in left_out_note(store)
    assert "choose two models" not in left_out_note(store, include_unblind=True)
