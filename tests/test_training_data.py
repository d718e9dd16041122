"""Training data: episodes from JSONL and the session database, pairing rules, reward keys, turn
records, snapshots, and locating agent turns when prompts were not recorded."""

from __future__ import annotations

import pytest

from simulators.domain import Episode, Task, Turn
from simulators.store import SessionStore
from simulators.trajectories import write_episodes
from training.data import (
    action_ids,
    action_tokens,
    agent_turn_prompts,
    best_trajectories,
    data_snapshot,
    dialogue_tokens,
    end_of_turn_id,
    prompt_completion_tokens,
    read_episodes,
    trajectory_pairs,
    turn_records,
)
from training.synthetic import scripted_episode

BACKEND = Task(id="b1", kind="backend", problem_description="Add two numbers.",
               ground_truth="def add(a, b):\n    return a + b", test_cases={"test1": "add(1, 2)"})
FRONTEND = Task(id="f1", kind="frontend", problem_description="A landing page.",
                ground_truth="<html><body><h1>Hi</h1></body></html>")


def episode(task: Task, reward: float | None, sample: int, **scores) -> Episode:
    turns = [Turn("human", task.problem_description),
             Turn("agent", f"answer {sample}", input=f"<prompt {sample}>", output=f"answer {sample}")]
    return Episode(task=task, turns=turns, reward=reward, scores=scores, meta={"sample": sample})


def test_backend_pairs_put_the_best_success_over_every_lower_reward():
    episodes = [episode(BACKEND, 1.0, 0, success=True), episode(BACKEND, 0.4, 1, success=False),
                episode(BACKEND, 1.0, 2, success=True), episode(BACKEND, 0.0, 3, success=False)]
    assert trajectory_pairs(episodes) == [(0, 1), (0, 3)]  # the tied success is not "worse"
    failed = [episode(BACKEND, 0.8, 0, success=False), episode(BACKEND, 0.2, 1, success=False)]
    assert trajectory_pairs(failed) == []  # no successful trajectory: nothing to prefer (evaluate_code.py)
    assert trajectory_pairs(failed, pairing="threshold") == [(0, 1)]


def test_frontend_pairs_need_a_reward_gap_of_at_least_the_threshold():
    episodes = [episode(FRONTEND, 0.9, 0), episode(FRONTEND, 0.85, 1), episode(FRONTEND, 0.5, 2)]
    assert trajectory_pairs(episodes) == [(0, 2), (1, 2)]
    assert trajectory_pairs(episodes, min_reward_gap=0.02) == [(0, 1), (0, 2), (1, 2)]


def test_the_reward_key_picks_the_score_that_orders_trajectories():
    episodes = [episode(FRONTEND, 0.9, 0, design=0.2, rating=2), episode(FRONTEND, 0.1, 1, design=0.8, rating=5),
                episode(FRONTEND, 0.5, 2)]  # unrated, no design score: left out under those keys
    assert trajectory_pairs(episodes, reward_key="reward") == [(0, 1), (0, 2), (2, 1)]
    assert trajectory_pairs(episodes, reward_key="design") == [(1, 0)]
    assert trajectory_pairs(episodes, reward_key="rating") == [(1, 0)]
    with pytest.raises(ValueError, match="unknown reward key"):
        trajectory_pairs(episodes, reward_key="vibes")


def test_rft_keeps_each_tasks_best_trajectory_when_it_reaches_the_bar():
    episodes = [episode(BACKEND, 0.4, 0), episode(BACKEND, 1.0, 1), episode(FRONTEND, 0.7, 0)]
    assert best_trajectories(episodes) == [1]
    assert best_trajectories(episodes, min_reward=0.5) == [1, 2]


def test_episodes_come_from_jsonl_and_the_session_database_together(tmp_path):
    jsonl = tmp_path / "rollouts.jsonl"
    write_episodes([episode(BACKEND, 1.0, 0, success=True), episode(FRONTEND, 0.3, 1)], jsonl)
    store = SessionStore(tmp_path / "collab.sqlite")
    session = store.create_session(BACKEND, mode="human", human="person:ana", model_version="base")
    store.add_turn(session, Turn("human", BACKEND.problem_description))
    store.add_turn(session, Turn("agent", "def add(a, b): return a + b", input="<p>", output="def add(a, b): return a + b"))
    store.finish_session(session, answer="def add(a, b): return a + b", reward=1.0, scores={"success": True})

    both = read_episodes(f"{jsonl},{tmp_path / 'collab.sqlite'}")
    assert [e.task.id for e in both] == ["b1", "f1", "b1"] and both[2].meta["session_id"] == session
    assert [e.task.kind for e in read_episodes(str(jsonl), kind="frontend")] == ["frontend"]
    snapshot = data_snapshot(str(jsonl), both)
    assert snapshot["count"] == 3 and snapshot["hash"] == data_snapshot(str(jsonl), both)["hash"]
    assert snapshot["hash"] != data_snapshot(str(jsonl), both[:2])["hash"]


def test_turn_records_take_a_fraction_of_the_trajectories_with_their_exact_prompts():
    episodes = [episode(BACKEND, 1.0, k) for k in range(20)]
    records = turn_records(episodes, fraction=0.1, seed=0)
    assert len(records) == 2 and len({r.episode for r in records}) == 2
    assert all(r.prompt == f"<prompt {r.output.split()[-1]}>" and r.privileged == BACKEND.ground_truth for r in records)
    assert turn_records(episodes, fraction=0.1, seed=0) == records  # seeded


def test_without_recorded_prompts_the_dialogue_is_rendered_again_identically(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    recorded = scripted_episode(BACKEND, ["Ints or floats?", "I WANT TO ANSWER: def add(a, b): return a + b"],
                                ["Ints."], tokenizer)
    stripped = Episode(task=BACKEND, turns=[Turn(t.role, t.content) for t in recorded.turns])
    assert agent_turn_prompts(stripped, tokenizer) == [t.input for t in recorded.agent_turns]
    long = dialogue_tokens(recorded, tokenizer, max_length=100_000)
    cut = dialogue_tokens(recorded, tokenizer, max_length=120, max_privileged_tokens=8)
    assert len(cut.input_ids) == 120 and cut.input_ids[:8] == long.input_ids[:8]  # c's head kept, old dialogue dropped
    assert cut.input_ids[8:] == long.input_ids[-112:] and cut.token_turn[8:] == long.token_turn[-112:]


def turn_texts(tokens, tokenizer) -> list[str]:
    """What the scored tokens of each agent turn decode to."""
    return [tokenizer.decode([i for i, turn in zip(tokens.input_ids, tokens.token_turn) if turn == t])
            for t in range(tokens.num_turns)]


def test_every_agent_action_ends_with_the_end_of_turn_token(tiny_model_dir):
    """RFT, multi-turn DPO and the critic score each message with the token that closes it (the
    agent learns when to stop), and the actor's completions and the critic's candidates are the
    same tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|im_end|>"  # ChatML's, from the template
    agent = ["Ints or floats?", "I WANT TO ANSWER: def add(a, b): return a + b"]
    episode = scripted_episode(BACKEND, agent, ["Ints."], tokenizer)
    for privileged in (False, True):  # RFT and multi-turn DPO see no c; the critic does
        tokens = dialogue_tokens(episode, tokenizer, privileged=privileged)
        assert turn_texts(tokens, tokenizer) == [text + "<|im_end|>" for text in agent]
    last = episode.agent_turns[-1]
    prompt_ids, completion_ids = prompt_completion_tokens(tokenizer, last.input, last.content, max_length=512)
    one_turn = action_tokens(tokenizer, BACKEND.privileged_information, last.input, last.content)
    scored = [i for i, turn in zip(one_turn.input_ids, one_turn.token_turn) if turn == 0]
    assert completion_ids == scored == action_ids(tokenizer, last.content)
    assert completion_ids[-1] == end_of_turn_id(tokenizer)


# A template that trims each message and closes it with its own token (as Llama 3's does with <|eot_id|>).
TRIMMING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] | trim) + '<|endoftext|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_template_that_trims_whitespace_still_gives_exact_agent_spans():
    """The agent's messages carry surrounding whitespace the template trims away in later prompts:
    the recorded prompts no longer chain by exact prefix, yet every turn's tokens are located."""
    from tests.conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TRIMMING_TEMPLATE
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|endoftext|>"  # not eos: the template's
    agent = ["  Ints or floats?\n", "Return 0 for an empty list. ", "I WANT TO ANSWER: def add(a, b): return a + b\n\n"]
    recorded = scripted_episode(BACKEND, agent, ["Ints.", "Fine."], tokenizer)
    assert "<|im_start|>assistant\nInts or floats?<|endoftext|>" in recorded.agent_turns[1].input  # trimmed
    unrecorded = Episode(task=BACKEND, turns=[Turn(t.role, t.content) for t in recorded.turns])
    for episode in (recorded, unrecorded):  # recorded prompts, and the dialogue rendered again
        tokens = dialogue_tokens(episode, tokenizer, privileged=False)
        # Earlier messages as the dialogue shows them (trimmed), the last as written; each closed.
        assert turn_texts(tokens, tokenizer) == ["Ints or floats?<|endoftext|>", "Return 0 for an empty list.<|endoftext|>",
                                                 agent[-1] + "<|endoftext|>"]
        last = recorded.agent_turns[-1]
        assert tokenizer.decode(tokens.input_ids) == last.input + last.content + "<|endoftext|>"


def test_telling_a_database_from_jsonl_never_loses_the_app_s_writes(tmp_path):
    """Regression: reading the database's header with open() dropped this process's SQLite locks,
    so another process closing its connection deleted the write-ahead log still in use here."""
    import subprocess
    import sys

    from training.data import is_session_db

    db = tmp_path / "collab.sqlite"
    store = SessionStore(db)  # the app's store: its connection stays open
    store.create_session(BACKEND, mode="human", human="person:ana", model_version="base")
    assert is_session_db(db) and not is_session_db(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    assert not is_session_db(tmp_path / "empty.jsonl")
    count = f"from simulators.store import SessionStore; print(len(SessionStore({str(db)!r}).list_sessions()))"
    subprocess.run([sys.executable, "-c", count], check=True, capture_output=True)  # opens, then closes
    store.create_session(BACKEND, mode="human", human="person:bo", model_version="base")
    assert (tmp_path / "collab.sqlite-wal").exists()
    seen = subprocess.run([sys.executable, "-c", count], check=True, capture_output=True, text=True)
    assert seen.stdout.strip() == "2"  # another process sees both sessions
