"""The arena's pool and draw (collab_app.arena): blind pairs, weighted towards pairs with few battles."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from collab_app.arena import arena_pool, blind_battles, draw_pair, names_itself
from simulators.domain import Task
from simulators.store import SessionStore

TASK = Task(id="t", kind="backend", problem_description="Identity.", ground_truth="def f(x):\n    return x",
            test_cases={"test1": "f(1)"})


def test_the_default_pool_is_the_base_and_every_registry_version(tmp_path, monkeypatch):
    from simulators.llm.registry import ModelRegistry

    monkeypatch.setenv("COLLAB_HOME", str(tmp_path))
    assert arena_pool("", "default") == ["default"]  # an empty registry: one model, no pair
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    versions = [ModelRegistry().register(adapter, base="default", algorithm="sweet", metrics={}) for _ in range(2)]
    assert arena_pool("", "default") == ["default", *(f"registry:{v.id}" for v in versions)]
    assert arena_pool(" a, b ,a,, c", "default") == ["a", "b", "c"]  # the flag wins, each spec once
    with pytest.raises(ValueError, match="at least two models"):
        draw_pair(["only"], Counter())


def test_pairs_with_few_battles_are_drawn_more_often(tmp_path):
    store = SessionStore(tmp_path / "db.sqlite")
    session = store.create_session(TASK, mode="compare", human="person:t", model_version="x")
    for _ in range(9):  # nine finished blind battles of x and y; unblind and round votes do not count
        store.add_feedback(session, "vote", payload={"final": True, "blind": True, "specs": ["x", "y"]})
    store.add_feedback(session, "vote", payload={"final": True, "blind": False, "specs": ["x", "z"]})
    store.add_feedback(session, "vote", payload={"final": False, "blind": True, "specs": ["y", "z"]})
    battles = blind_battles(store)
    assert battles == Counter({frozenset({"x", "y"}): 9})
    rng = random.Random(0)
    drawn = Counter(frozenset(draw_pair(["x", "y", "z"], battles, rng)) for _ in range(3000))
    # Weights 1/10, 1, 1: the played pair comes up about 1 time in 21.
    assert 0.02 < drawn[frozenset({"x", "y"})] / 3000 < 0.08
    assert abs(drawn[frozenset({"x", "z"})] - drawn[frozenset({"y", "z"})]) < 300
    assert all(len(pair) == 2 for pair in drawn)


def test_a_reply_names_its_model_by_a_distinctive_word_of_its_name():
    assert names_itself("I'm SmolLM, a small model.", "SmolLM2-135M-Instruct")
    assert names_itself("As Qwen I think...", "/models/Qwen2.5-0.5B-Instruct/")
    assert not names_itself("I am a helpful assistant. Should negatives count?", "SmolLM2-135M-Instruct")
    assert not names_itself("Any instruct model would say this.", "tiny-instruct-model")  # generic words only
