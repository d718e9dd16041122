"""LiveSession: the rules of a collaboration with a person, stored turn by turn (tiny real model)."""

import json

import pytest

from collab_app.catalog import TaskCatalog, free_form_task
from collab_app.session import RESAMPLE_TEMPERATURE, LiveSession, SessionError
from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Task
from simulators.llm import load_model
from simulators.llm.scripted import ScriptedModel
from simulators.store import SessionStore
from simulators.store.preferences import preference_pairs

TASK = Task(id="sum-task", kind="backend",
            problem_description="Sum the even numbers. The signature of the function is: def sum_even(xs)",
            ground_truth="def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
            test_cases={f"test{i}": f"sum_even(list(range({i})))" for i in range(1, 11)})


@pytest.fixture
def agent(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "db.sqlite")


def play_agent(session: LiveSession):
    views = list(session.agent_replies())
    assert views[-1].done and all(not v.done for v in views[:-1])
    return views[-1]


def test_turns_are_stored_as_they_happen_with_prompt_and_model(agent, store):
    session = LiveSession(TASK, store, agent, human_name="person:ana", max_new_tokens=8)
    assert session.expecting == "agent"
    with pytest.raises(SessionError, match="wait for the agent"):
        session.human_says("hello?")
    final = play_agent(session)
    stored = store.turns(session.session_id)
    assert [t["role"] for t in stored] == ["human", "agent"]
    assert stored[1]["content"] == final.text and stored[1]["model_version"] == agent.name
    assert stored[1]["input"].startswith("<|im_start|>system") and TASK.problem_description in stored[1]["input"]
    session.human_says("Only even numbers count.")
    assert store.turns(session.session_id)[-1]["content"] == "Only even numbers count."
    assert session.expecting == "agent"


def test_undo_edit_regenerate_and_votes_become_feedback_and_pairs(agent, store):
    session = LiveSession(TASK, store, agent, max_new_tokens=8, temperature=1.0)
    play_agent(session)
    session.human_says("Negative numbers too.")
    play_agent(session)
    session.undo()
    assert [t.role for t in session.episode.turns] == ["human", "agent"]
    assert len(store.turns(session.session_id)) == 2
    session.edit(1, "Should negative even numbers count?")
    assert store.turns(session.session_id)[1]["content"] == "Should negative even numbers count?"
    session.human_says("Yes.")
    discarded = play_agent(session).text
    new = list(session.regenerate())[-1].text
    session.vote(3, liked=True)
    kinds = [e["kind"] for e in store.feedback(session.session_id)]
    assert kinds == ["edit", "regenerate", "like"]
    pairs = preference_pairs(store)
    assert pairs[0].chosen == "Should negative even numbers count?" and pairs[0].source == "edit"
    assert pairs[0].prompt == store.turns(session.session_id)[1]["input"]
    if new != discarded:  # sampling can repeat itself; then there is no preference to learn
        assert (pairs[1].chosen, pairs[1].rejected, pairs[1].source) == (new, discarded, "regenerate+like")
    with pytest.raises(SessionError):
        session.vote(0, liked=True)  # the human's own message


def test_free_form_session_ends_after_ten_rounds_and_takes_a_rating(agent, store):
    task = free_form_task("Write me a haiku generator.", "backend")
    session = LiveSession(task, store, agent, mode="free", max_new_tokens=4)
    for round_index in range(MAX_ROUNDS):
        last = play_agent(session)
        if session.finished:
            break
        session.human_says(f"round {round_index}")
    assert session.finished and last.finished and session.episode.rounds <= MAX_ROUNDS
    session.rate(4, "fine")
    (row,) = store.list_sessions()
    assert (row.status, row.rating, row.mode) == ("answered", 4, "free")
    assert store.episode(session.session_id).task.free_form
    with pytest.raises(SessionError, match="ended"):
        session.human_says("more?")


def test_the_slow_steps_after_a_reply_are_announced_while_they_run(store):
    """Issue 14: scoring (and a frontend page's rendering) is said in a view of its own, before the
    final view, so the UI never waits silently."""
    answer = f"{ANSWER_MARKER}\n```python\ndef sum_even(xs):\n    return 0\n```"
    session = LiveSession(TASK, store, ScriptedModel(["Should negatives count?", answer]))
    assert "scoring" not in [v.stage for v in session.agent_replies()]  # a question is not scored
    session.human_says("Yes.")
    views = list(session.agent_replies())
    stages = [v.stage for v in views]
    assert stages[-2:] == ["scoring", "writing"] and set(stages[:-2]) == {"writing"}
    assert views[-2].text == views[-1].text == answer and not views[-2].done and views[-1].finished


def test_an_answer_is_scored_at_once_with_the_tests_table(store):
    """A scripted agent (a tiny random model cannot code) asks once, then answers correctly."""
    answer = "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)"
    agent = ScriptedModel(["Should negative numbers count?", f"{ANSWER_MARKER}\n```python\n{answer}\n```"])
    session = LiveSession(TASK, store, agent)
    assert not play_agent(session).finished
    session.human_says("Yes, all even numbers.")
    final = play_agent(session)
    assert final.finished and session.finished and session.expecting == "nobody"
    scores = session.episode.scores
    assert scores["success"] is True and scores["tests_passed"] == 1.0 and len(scores["tests"]) == 10
    (row,) = store.list_sessions()
    assert (row.status, row.reward) == ("scored", 1.0)
    stored = store.episode(session.session_id)
    assert stored.answer.strip().startswith("```python") or "def sum_even" in stored.answer


def test_catalog_offers_samples_and_validates_uploads(tmp_path):
    catalog = TaskCatalog()
    assert len(catalog) >= 30
    upload = tmp_path / "mine.jsonl"
    upload.write_text('{"problem_description": "p", "ground_truth": "<html></html>"}\nbroken\n')
    added, errors, renamed = catalog.add_upload(str(upload), owner="me")
    assert added == 1 and errors[0].startswith("mine.jsonl:2: invalid JSON") and renamed == []
    assert catalog.random("frontend").kind == "frontend"


def test_an_upload_is_its_uploaders_alone_and_goes_with_its_session(tmp_path):
    """Issue 17, class 8: an upload was every client's (its id and hidden reference included)."""
    catalog = TaskCatalog()
    upload = tmp_path / "mine.jsonl"
    upload.write_text(json.dumps({"id": "secret", "problem_description": "p", "ground_truth": "def f():\n    return 1",
                                  "test_cases": {"test1": "f()"}}) + "\n")
    loaded = catalog.choices()
    assert catalog.add_upload(str(upload), owner="alice") == (1, [], [])
    assert catalog.get("secret", "alice").ground_truth.endswith("return 1")
    assert ("[backend] p", "secret") in catalog.choices("backend", "alice")
    for other in (None, "bob"):  # another browser session, or a lookup that names no session
        assert catalog.choices(owner=other) == loaded
        with pytest.raises(KeyError, match="unknown task 'secret'"):
            catalog.get("secret", other)
    # The same id uploaded by another session is that session's own task: nothing is renamed.
    upload.write_text(json.dumps({"id": "secret", "problem_description": "q", "ground_truth": "<html></html>"}) + "\n")
    assert catalog.add_upload(str(upload), owner="bob") == (1, [], [])
    assert catalog.get("secret", "bob").kind == "frontend" and catalog.get("secret", "alice").kind == "backend"
    catalog.forget("alice")
    assert catalog.choices(owner="alice") == loaded and catalog.get("secret", "bob").kind == "frontend"


def test_an_upload_never_replaces_a_loaded_task_or_its_hidden_reference(tmp_path):
    """Issue 17, class 8: an upload naming an existing task id replaced it, for every client."""
    catalog = TaskCatalog()
    sample = catalog.random("backend")
    forged = {"id": sample.id, "problem_description": sample.problem_description,
              "ground_truth": "def f():\n    return 'forged'", "test_cases": {"test1": "f()"}}
    same = {"id": sample.id, "problem_description": sample.problem_description,
            "ground_truth": sample.ground_truth, "test_cases": sample.test_cases,
            "hidden_information": sample.hidden_information}
    upload = tmp_path / "mine.jsonl"
    upload.write_text(json.dumps(forged) + "\n" + json.dumps(same) + "\n")
    before = len(catalog)
    added, errors, renamed = catalog.add_upload(str(upload), owner="me")
    assert catalog.get(sample.id, "me").ground_truth == sample.ground_truth  # untouched, even for the uploader
    assert added == 2 and len(catalog) == before  # uploads are not loaded tasks
    # the forged one beside it; the identical one is the same task
    assert len(catalog.choices(owner="me")) == len(catalog.choices()) + 1
    (note,) = renamed
    assert errors == []
    assert note.startswith(f"mine.jsonl:1: id {sample.id!r} belongs to another task; added as ")
    new_id = note.rsplit(" ", 1)[1].strip("'")
    assert catalog.get(new_id, "me").ground_truth == forged["ground_truth"] and new_id != sample.id


def test_the_person_ends_a_session_at_any_round_and_the_latest_reply_is_scored(store):
    code = "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)"
    session = LiveSession(TASK, store, ScriptedModel([f"Like this?\n```python\n{code}\n```"]))
    with pytest.raises(SessionError, match="not replied yet"):
        session.end()
    play_agent(session)
    session.end()  # round 1 of 10, no answer marker
    assert session.finished and session.episode.reward == 1.0
    (row,) = store.list_sessions()
    assert (row.status, row.reward) == ("scored", 1.0)
    with pytest.raises(SessionError, match="ended"):
        session.end()


def test_regenerate_samples_with_a_new_seed_and_records_them(agent, store):
    session = LiveSession(TASK, store, agent, max_new_tokens=8)  # greedy otherwise
    play_agent(session)
    list(session.regenerate())
    list(session.regenerate())
    seeds = [e["payload"]["seed"] for e in store.feedback(session.session_id)]
    temperatures = {e["payload"]["temperature"] for e in store.feedback(session.session_id)}
    assert len(set(seeds)) == 2 and temperatures == {RESAMPLE_TEMPERATURE}
