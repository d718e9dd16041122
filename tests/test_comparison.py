"""Comparison: two models, one shared history, a vote per round (scripted and tiny real models)."""

from __future__ import annotations

import json
import random

import pytest
from conftest import build_tiny_model, build_tiny_tokenizer

from collab_app.commands.export import export
from collab_app.comparison import Comparison, side_answer
from collab_app.session import SessionError
from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Task, Turn
from simulators.llm import load_model
from simulators.llm.scripted import ScriptedModel
from simulators.store import SessionStore
from simulators.store.preferences import preference_pairs

TASK = Task(id="sum-even", kind="backend",
            problem_description="Sum the even numbers of a list. The signature of the function is: def sum_even(xs)",
            ground_truth="def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
            test_cases={f"test{i}": f"sum_even(list(range(-{i}, {i * 3})))" for i in range(1, 11)})
RIGHT = f"{ANSWER_MARKER}\ndef sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)"
WRONG = f"{ANSWER_MARKER}\ndef sum_even(xs):\n    return 0"


@pytest.fixture(scope="session")
def tiny_model_b_dir(tmp_path_factory):
    """A second tiny model: same tokenizer and chat template as ``tiny_model_dir``, other weights."""
    path = tmp_path_factory.mktemp("tiny-llama-b")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "db.sqlite")


def play_round(comparison: Comparison):
    views = list(comparison.replies())
    assert views[-1].complete and not any(v.complete for v in views[:-1])
    return views[-1]


def position_of(comparison: Comparison, name: str) -> str:
    return next(p for p, side in comparison.sides.items() if side.name == name)


def test_a_comparison_votes_carries_the_winner_and_scores_both_answers(store, tmp_path):
    good = ScriptedModel(["Should negative numbers count?", RIGHT], name="good")
    bad = ScriptedModel(["What is a list?", WRONG], name="bad")
    comparison = Comparison(TASK, store, good, bad, human_name="person:ana", rng=random.Random(3))
    g, b = position_of(comparison, "good"), position_of(comparison, "bad")
    sessions = {p: side.session_id for p, side in comparison.sides.items()}

    first = play_round(comparison)
    assert getattr(first, g).text == "Should negative numbers count?" and comparison.stage == "vote"
    with pytest.raises(SessionError, match="vote"):
        comparison.human_says("Yes, they count.")  # voting comes first
    comparison.vote(g)
    assert comparison.history[-1].content == "Should negative numbers count?"
    # The losing side's session goes on from the carried reply, attributed to the model that wrote it.
    loser_turn = store.turns(sessions[b])[1]
    assert (loser_turn["content"], loser_turn["model_version"]) == ("Should negative numbers count?", "good")

    comparison.human_says("Yes, negative even numbers count too.")
    assert all(store.turns(s)[-1]["content"] == "Yes, negative even numbers count too." for s in sessions.values())
    play_round(comparison)
    assert [t.content for t, _ in comparison.conversation(g)][-1] == RIGHT
    comparison.vote(g)  # the carried reply answers: the rounds are over
    assert comparison.stage == "final_vote" and "answer" in comparison.end_reason
    # Each side's session ends with its own final reply, the one it is scored on.
    assert store.turns(sessions[g])[-1]["content"] == RIGHT and store.turns(sessions[b])[-1]["content"] == WRONG
    assert not comparison.revealed
    comparison.vote_final(g)

    assert comparison.revealed and comparison.stage == "done"
    assert comparison.sides[g].reward == 1.0 and comparison.sides[g].scores["success"]
    assert comparison.sides[b].reward < 1.0
    rows = {s.id: s for s in store.list_sessions(mode="compare")}
    assert {rows[sessions[g]].status, rows[sessions[b]].status} == {"scored"}
    assert rows[sessions[g]].reward == 1.0

    votes = [e for e in store.feedback() if e["kind"] == "vote"]
    assert [v["payload"]["final"] for v in votes] == [False, False, True]
    assert {v["session_id"] for v in votes} == {sessions["a"]}
    first_vote = votes[0]["payload"]
    assert first_vote["winner"] == g and first_vote["round"] == 1 and votes[0]["turn_idx"] == 1
    assert (first_vote["model_a"], first_vote["model_b"]) == (comparison.sides["a"].name, comparison.sides["b"].name)
    assert first_vote["prompt"] == first_vote["prompt_a"] == first_vote["prompt_b"]
    assert first_vote["prompt"] == store.turns(sessions[g])[1]["input"]

    pairs = preference_pairs(store)
    assert [(p.chosen, p.rejected, p.source) for p in pairs] == [
        ("Should negative numbers count?", "What is a list?", "vote"), (RIGHT, WRONG, "vote")]
    assert "Yes, negative even numbers count too." in pairs[1].prompt
    out = tmp_path / "pairs.jsonl"
    assert export(store, "trl", out) == 2
    assert json.loads(out.read_text().splitlines()[1]) == pairs[1].to_trl()
    conversational = tmp_path / "conversational.jsonl"
    assert export(store, "trl-conversational", conversational) == 2
    for line, pair in zip(conversational.read_text().splitlines(), pairs):
        row = json.loads(line)
        assert [m["role"] for m in row["prompt"]][:2] == ["system", "user"] and row["prompt"][-1]["role"] == "user"
        assert row["chosen"] == [{"role": "assistant", "content": pair.chosen}]
        assert row["rejected"] == [{"role": "assistant", "content": pair.rejected}]
        assert good.format_prompt(row["prompt"]) == pair.prompt  # the messages the stored prompt was made of


def test_ties_carry_a_and_the_rounds_end_at_the_limit(store):
    chatty = [ScriptedModel([f"Question {i} from {n}?" for i in range(MAX_ROUNDS)], name=n) for n in ("x", "y")]
    comparison = Comparison(TASK, store, *chatty)
    for round_index in range(MAX_ROUNDS):
        play_round(comparison)
        comparison.vote("tie" if round_index % 2 else "both_bad")
        if comparison.stage == "final_vote":
            break
        comparison.human_says(f"Answer {round_index}.")
    assert comparison.rounds == MAX_ROUNDS and comparison.end_reason == f"{MAX_ROUNDS} rounds were played"
    carried = [t.content for t in comparison.history if t.role == "agent"]
    assert all(c.endswith(f"from {comparison.sides['a'].name}?") for c in carried)
    comparison.vote_final("tie")
    # Nobody answered: each side is scored on its last reply; no vote here makes a preference pair.
    assert comparison.sides["b"].answer == comparison.sides["b"].replies[-1].turn.content
    assert preference_pairs(store) == []


def test_the_person_can_end_early_but_only_after_voting(store):
    comparison = Comparison(TASK, store, ScriptedModel(["Hm?"], name="p"), ScriptedModel(["Eh?"], name="q"))
    with pytest.raises(SessionError, match="wait for both"):
        comparison.vote("a")
    play_round(comparison)
    with pytest.raises(SessionError, match="vote"):
        comparison.end()
    with pytest.raises(SessionError, match="a vote is one of"):
        comparison.vote("c")
    comparison.vote("b")
    comparison.end()
    assert comparison.stage == "final_vote"
    # Each side sees its own last reply again once the rounds are over.
    assert comparison.conversation("a")[-1][0].content == comparison.sides["a"].replies[-1].turn.content
    with pytest.raises(SessionError, match="overall"):
        comparison.human_says("one more thing")
    comparison.vote_final("both_bad")
    with pytest.raises(SessionError, match="ended"):
        comparison.vote_final("a")


def test_stopped_replies_can_be_retried_and_abandoning_keeps_the_turns(store):
    long_reply = " ".join(f"word{i}" for i in range(200))
    comparison = Comparison(TASK, store, ScriptedModel([long_reply], name="p"), ScriptedModel([long_reply], name="q"))
    stream = comparison.replies()
    next(stream)
    comparison.stop()
    with pytest.raises(SessionError, match="stopped"):
        list(stream)
    assert comparison.stage == "replies" and comparison.rounds == 0
    assert play_round(comparison).a.text == long_reply
    comparison.abandon()
    assert {s.status for s in store.list_sessions()} == {"abandoned"}
    assert all(len(store.turns(s.id)) == 2 for s in store.list_sessions())


def test_side_answer_is_the_latest_answer_else_the_last_reply():
    replies = [Turn("agent", "Q?"), Turn("agent", RIGHT), Turn("agent", "Anything else?")]
    assert side_answer(TASK, replies) == RIGHT.split(ANSWER_MARKER)[1].strip()
    assert side_answer(TASK, replies[:1]) == "Q?"


def test_two_tiny_models_stream_side_by_side_from_one_prompt(store, tiny_model_dir, tiny_model_b_dir):
    first, second = load_model(str(tiny_model_dir)), load_model(str(tiny_model_b_dir))
    comparison = Comparison(TASK, store, first, second, max_new_tokens=6)
    views = list(comparison.replies())
    final = views[-1]
    assert final.complete and final.a.text == comparison.sides["a"].replies[0].turn.content
    turns = {p: store.turns(s.session_id)[1] for p, s in comparison.sides.items()}
    assert turns["a"]["input"] == turns["b"]["input"]  # same template, same shared history
    assert {turns["a"]["model_version"], turns["b"]["model_version"]} == {str(tiny_model_dir), str(tiny_model_b_dir)}
    comparison.vote("a")
    payload = store.feedback()[0]["payload"]
    assert payload["prompt"] == payload["prompt_a"] == payload["prompt_b"] == turns["a"]["input"]
    assert (payload["a"], payload["b"]) == (final.a.text, final.b.text)


def test_a_frontend_comparison_renders_both_pages_and_scores_them(store):
    from simulators.render import shared_renderer
    from simulators.tasks import load_sample_tasks

    task = next(t for t in load_sample_tasks("frontend") if t.id == "sample-frontend-01")
    good = ScriptedModel([f"{ANSWER_MARKER}\n{task.ground_truth}"], name="good")
    bad = ScriptedModel([f"{ANSWER_MARKER}\n<html><body><p class='p-4'>Bread.</p></body></html>"], name="bad")
    comparison = Comparison(task, store, good, bad, human_name="person:ana", rng=random.Random(0),
                            renderer=shared_renderer())
    g, b = position_of(comparison, "good"), position_of(comparison, "bad")

    view = play_round(comparison)
    for position in (g, b):  # both pages rendered and kept, shown side by side
        assert getattr(view, position).render_error is None
        assert store.render_path(getattr(view, position).render_hash).is_file()
    comparison.vote(g)
    comparison.vote_final(g)

    good_scores, bad_scores = comparison.sides[g].scores, comparison.sides[b].scores
    assert good_scores["design"] == pytest.approx(1.0) and bad_scores["design"] < 0.9
    assert "clip" not in good_scores and good_scores["clip_unavailable"]  # no CLIP weights offline
    assert comparison.sides[g].reward == good_scores["design"]


def test_a_reply_that_names_its_model_is_kept_and_its_votes_are_marked(store):
    """Issue 14: anonymity. A model that names itself is shown as is, and every vote after it says so."""
    talker = ScriptedModel(["Hi, I am SmolLM, made by Hugging Face. Negative numbers too?", "Tell me more."],
                           name="SmolLM2-135M-Instruct")
    quiet = ScriptedModel(["Should negative numbers count?", "And zero?"], name="/models/other-7b")
    comparison = Comparison(TASK, store, talker, quiet, blind=True, specs=("talker-spec", "quiet-spec"),
                            rng=random.Random(0))
    play_round(comparison)
    comparison.vote("tie")
    comparison.human_says("Yes.")
    play_round(comparison)
    comparison.vote("a")
    comparison.end()
    comparison.vote_final("b")
    talking = position_of(comparison, "SmolLM2-135M-Instruct")
    votes = [e["payload"] for e in store.feedback() if e["kind"] == "vote"]
    assert [v["identity_leak"] for v in votes] == [[talking], [], [talking]]  # that round; then any round
    assert all(v["blind"] and v["specs"] == ["quiet-spec", "talker-spec"] for v in votes)
    assert "SmolLM" in comparison.sides[talking].replies[0].turn.content  # shown as it is
