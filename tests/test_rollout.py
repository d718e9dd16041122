"""Rollouts: batched simulated episodes, scored, written as sweet_rl JSONL, resumable."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from simulators.domain import ANSWER_MARKER, Turn
from simulators.humans import BACKEND_REPLY_LIMIT, SimulatedHuman, clean_reply, reply_is_settled
from simulators.llm import GenerationConfig, load_model
from simulators.llm.scripted import ScriptedModel
from simulators.rollout import EpisodeProgress, RolloutConfig, new_episode, play, run_rollouts
from simulators.scoring.answers import extract_html
from simulators.tasks import load_sample_tasks
from simulators.trajectories import load_episodes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backend_tasks():
    return load_sample_tasks("backend")[:3]


def test_episodes_end_on_the_answer_marker_and_are_scored(tmp_path, backend_tasks, tiny_model_dir):
    task = backend_tasks[0]
    agent = ScriptedModel(["Which edge cases matter?", f"{ANSWER_MARKER}\n```python\n{task.ground_truth}\n```"])
    human = SimulatedHuman(load_model(str(tiny_model_dir)), max_new_tokens=8)
    config = RolloutConfig(out=str(tmp_path / "r.jsonl"), max_rounds=10)
    (episode,) = run_rollouts([task], agent, human, config, progress=False)
    assert [t.role for t in episode.turns] == ["human", "agent", "human", "agent"]
    assert episode.turns[1].input.startswith("<|im_start|>system")
    assert episode.turns[2].model == human.model.name and len(episode.turns[2].content) <= 400
    assert episode.reward == 1.0 and episode.scores["success"] is True
    (stored,) = load_episodes(config.out).items
    assert stored.turns == episode.turns and stored.meta == {"sample": 0, "seed": 0}


def test_round_limit_and_resume_and_best_of_n(tmp_path, backend_tasks, tiny_model_dir):
    agent = load_model(str(tiny_model_dir))  # random text: never answers, so every episode hits the limit
    human = SimulatedHuman(agent, max_new_tokens=4)
    config = RolloutConfig(out=str(tmp_path / "r.jsonl"), max_rounds=2, agent_max_new_tokens=6, best_of_n=2,
                           batch_size=4, seed=3)
    first = run_rollouts(backend_tasks[:2], agent, human, config, progress=False)
    assert len(first) == 4 and all(e.rounds == 2 and e.answer is not None for e in first)
    assert all(e.reward == 0.0 and e.scores["success"] is False for e in first)
    again = run_rollouts(backend_tasks, agent, human, config, progress=False)  # one task more
    assert sorted((e.task.id, e.meta["sample"]) for e in again) == sorted(
        (backend_tasks[2].id, k) for k in range(2))
    stored = load_episodes(config.out).items
    assert len(stored) == 6 and len({(e.task.id, e.meta["sample"]) for e in stored}) == 6


HIDDEN = "def shipping_cost(weight_kg, express):\n    base = 4.5 if weight_kg <= 2 else 9.0\n    return base"
REPLIES = [
    "Yes, express doubles the price. The threshold is 2 kg. Anything heavier costs 9.",
    "User: The threshold is 2 kg.\nExpress doubles it! Nothing else matters? Right.",
    "Sure.\n    base = 4.5 if weight_kg <= 2 else 9.0\nThat is all. Thanks a lot.",
    "Look:\n```python\ndef f(): pass\n```\nNo rounding. Keep the order. Done.",
    "de\ndefinitely 2 kg. It doubles. Bye.",
    "I don't mind! Use <div>x</div> if you like. Fine. Ok.",
]
ENDINGS = ["", " More. Text.", "```", "``", "`", "<div>", "<", "\ndef x():", "\nimport os", "ivider.",
           "\n    base = 4.5 if weight_kg <= 2 else 9.0", ": colon.", "\r\nnext line."]


def test_a_settled_reply_is_cleaned_the_same_whatever_follows():
    settled_prefixes = 0
    for reply in REPLIES:
        for cut in range(len(reply) + 1):
            prefix = reply[:cut]
            if not reply_is_settled(prefix, hidden=HIDDEN, max_sentences=2):
                continue
            settled_prefixes += 1
            cleaned = clean_reply(prefix, limit=BACKEND_REPLY_LIMIT, hidden=HIDDEN, max_sentences=2)
            for more in [reply[cut:]] + ENDINGS + [ending + reply[cut:] for ending in ENDINGS]:
                assert clean_reply(prefix + more, limit=BACKEND_REPLY_LIMIT, hidden=HIDDEN,
                                   max_sentences=2) == cleaned, (prefix, more)
    assert settled_prefixes > 20  # most replies settle well before their end
    assert not reply_is_settled("Yes. It is 2 kg. ```", hidden=HIDDEN, max_sentences=2)  # a block may open


def test_simulator_replies_are_those_of_the_whole_generation_cleaned(tiny_model_dir, backend_tasks):
    """The simulated human may stop generating once its reply is settled; what it says is what the
    whole 160-token generation says, cleaned."""
    model = load_model(str(tiny_model_dir))
    human = SimulatedHuman(model, max_new_tokens=160)
    episodes = [new_episode(task, human=human.name, agent_model="scripted") for task in backend_tasks]
    for episode, question in zip(episodes, ["Which edge cases matter?", "Any rounding?", "What about empty input?"]):
        episode.turns.append(Turn(role="agent", content=question))
    full = model.sample([human.messages(e) for e in episodes], config=GenerationConfig(max_new_tokens=160))
    assert human.replies(episodes) == [human.clean(e.task, texts[0]) for e, texts in zip(episodes, full)]


def test_rollouts_are_reproducible_for_a_seed_and_report_each_round(tiny_model_dir, backend_tasks):
    agent = load_model(str(tiny_model_dir))  # random text: never answers, so every episode plays 3 rounds
    human = SimulatedHuman(agent, max_new_tokens=8)
    config = RolloutConfig(max_rounds=3, agent_max_new_tokens=8, seed=1)

    def played(config: RolloutConfig):
        episodes = [new_episode(task, human=human.name, agent_model=agent.name) for task in backend_tasks]
        rounds: list[list[int]] = []
        play(episodes, agent, human, config, on_round=lambda played: rounds.append([e.rounds for e in played]))
        return [[(t.role, t.content) for t in e.turns] for e in episodes], rounds

    dialogues, rounds = played(config)
    assert played(config)[0] == dialogues
    assert played(replace(config, seed=2))[0] != dialogues
    assert rounds == [[1] * 3, [2] * 3, [3] * 3]


def test_progress_counts_rounds_as_fractions_and_ended_episodes_as_one(backend_tasks):
    progress = EpisodeProgress(total=2, max_rounds=4, disable=True)
    first, second = (new_episode(task, human="h", agent_model="a") for task in backend_tasks[:2])
    first.turns.append(Turn(role="agent", content="?"))
    progress.advance([first, second])
    assert progress.progress == pytest.approx(0.25) and progress.done == 0
    second.turns.append(Turn(role="agent", content=f"{ANSWER_MARKER} def f(): pass"))
    second.answer = "def f(): pass"
    progress.advance([first, second])
    assert progress.progress == pytest.approx(1.25) and progress.done == 1


def simulators_cli(args: list[str], timeout: float) -> dict:
    """``python -m simulators ARGS``, which must succeed; its last-line JSON summary."""
    done = subprocess.run([sys.executable, "-m", "simulators", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def default_model_rollout(out: Path, kind: str, *, limit: int, agent_tokens: int, simulator_tokens: int) -> dict:
    """The default model as agent and simulator on our first ``limit`` sample tasks of ``kind``, 2 rounds."""
    return simulators_cli(["rollout", "--tasks", "samples", "--kind", kind, "--limit", str(limit), "--agent", "default",
                           "--simulator", "default", "--out", str(out), "--max-rounds", "2", "--agent-max-new-tokens",
                           str(agent_tokens), "--simulator-max-new-tokens", str(simulator_tokens),
                           "--batch-size", str(limit)], timeout=1400)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_default_model_rollout_then_evaluate_from_the_command_line(tmp_path):
    """The issue's end-to-end check: the default model plays agent and simulator on 5 tasks (CPU)."""
    out = tmp_path / "rollouts.jsonl"
    default_model_rollout(out, "backend", limit=5, agent_tokens=64, simulator_tokens=24)
    episodes = load_episodes(out).items
    assert len(episodes) == 5 and all(e.agent_turns and e.answer is not None for e in episodes)
    assert all(e.turns[1].model == "smollm2-135m-instruct" and e.turns[1].content.strip() for e in episodes)
    summary = simulators_cli(["evaluate", str(out)], timeout=300)
    assert summary["n"] == 5 and 0.0 <= summary["tests_passed"] <= 1.0 and "success_rate" in summary
    assert all("tests_passed" in e.scores for e in load_episodes(out).items)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_default_model_frontend_rollout_renders_every_page_and_scores(tmp_path):
    """Frontend end to end on CPU: 3 sample tasks, the default model as designer and simulator; the
    simulator sees every non-final page rendered (text route), the final one is scored."""
    out = tmp_path / "frontend.jsonl"
    default_model_rollout(out, "frontend", limit=3, agent_tokens=128, simulator_tokens=32)
    episodes = load_episodes(out).items
    assert len(episodes) == 3 and all(e.task.kind == "frontend" for e in episodes)
    for episode in episodes:
        shown = [i for i, t in enumerate(episode.turns[:-1]) if t.role == "agent"]  # answered by the simulator
        assert sorted(episode.meta["renders"], key=int) == [str(i) for i in shown]
        for index in shown:  # a page in the message rendered; a message without one is said so
            has_html = extract_html(episode.turns[index].content) is not None
            assert episode.meta["renders"][str(index)] == ("ok" if has_html else "no html")
        assert 0.0 <= episode.scores["design"] <= 1.0 and episode.reward == episode.scores["design"]
        assert "clip" not in episode.scores and episode.scores["clip_unavailable"]  # no weights offline
        if extract_html(episode.answer or "") is not None:
            assert "render_error" not in episode.scores
    summary = simulators_cli(["evaluate", str(out)], timeout=600)
    assert summary["n"] == 3 and 0.0 <= summary["design"] <= 1.0 and "clip" not in summary
