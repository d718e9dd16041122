"""``python -m training loop`` end to end on a handful of rollouts: critic → sampling → ranking →
actor → evaluation → a registered version that loads as base + adapter; then a second iteration
that starts from it. Also the command line: every command's ``--help`` shows its defaults."""

from __future__ import annotations

import json

import pytest

from simulators.domain import Task
from simulators.llm import load_model
from simulators.llm.registry import ModelRegistry
from simulators.trajectories import load_episodes, write_episodes
from training.__main__ import COMMANDS, build_parser, main
from training.synthetic import scripted_episode

SYSTEM = "You are a helpful assistant."
TASKS = [
    Task(id="add", kind="backend", problem_description="Write a Python function that adds two numbers.",
         ground_truth="def add(a, b):\n    return a + b",
         test_cases={f"test{i}": f"add({i}, {i + 1})" for i in range(3)}),
    Task(id="top3", kind="backend", problem_description="Return the three largest values, largest first.",
         ground_truth="def solve(x):\n    return sorted(x, key=lambda v: -v)[:3]",
         test_cases={"test1": "solve([1, 5, 2, 9])", "test2": "solve([])"}),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rollouts_file(path, tokenizer):
    """Two trajectories per task, as a rollout would write them: one success, one failure."""
    episodes = []
    for task in TASKS:
        good = f"I WANT TO ANSWER: {task.ground_truth}"
        episodes.append(scripted_episode(task, ["Can you tell me more about the inputs?", good], ["Integers."],
                                         tokenizer, reward=1.0, scores={"success": True, "tests_passed": 1.0},
                                         sample=0, system_prompt=SYSTEM))
        episodes.append(scripted_episode(task, ["I WANT TO ANSWER: def f(x): return 0"], [], tokenizer,
                                         reward=0.0, scores={"success": False, "tests_passed": 0.0},
                                         sample=1, system_prompt=SYSTEM))
    write_episodes(episodes, path)
    return path


def loop_args(data, out, tiny_model_dir, *extra):
    return ["loop", "--data", str(data), "--out", str(out), "--base", str(tiny_model_dir),
            "--critic-epochs", "2", "--critic-learning-rate", "5e-3", "--actor-learning-rate", "5e-3",
            "--data-fraction", "1.0", "--best-of-n", "4", "--pairs-per-turn", "2", "--max-new-tokens", "12",
            "--gradient-accumulation-steps", "1", "--lora-r", "4", "--max-length", "512",
            "--eval-limit", "2", "--eval-samples", "1", "--eval-max-rounds", "2", "--eval-max-new-tokens", "12",
            "--simulator", str(tiny_model_dir), "--no-progress", *extra]


def test_loop_end_to_end_registers_a_version_that_loads_as_base_plus_adapter(tiny_model_dir, tmp_path, capsys,
                                                                              monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("COLLAB_HOME", str(tmp_path / "home"))  # the registry lives under it
    data = rollouts_file(tmp_path / "rollouts.jsonl", AutoTokenizer.from_pretrained(tiny_model_dir))
    registry = ModelRegistry()

    assert main(loop_args(data, tmp_path / "iter1", tiny_model_dir, "--promote-if-better")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    version = registry.get(result["version"])
    assert version.id == "v0001" and version.parent is None and version.base == str(tiny_model_dir)
    meta = version.meta
    assert meta["algorithm"] == "sweet" and meta["data"]["count"] == 4 and len(meta["data"]["hash"]) == 64
    assert meta["config"]["best_of_n"] == 4 and meta["config"]["promote_if_better"] is True
    evaluation = meta["metrics"]["evaluation"]
    assert evaluation["new"]["n"] == evaluation["parent"]["n"] == 2 and evaluation["matched"] == 2  # same tasks
    assert meta["metrics"]["critic"]["pairs"] == 2
    # The gate: paired by (task, sample), 2 tasks are too few to promote on, whatever the means say.
    decision = evaluation["gate"]
    assert decision["metric"] == "reward" and decision["difference"]["n"] == 2 and decision["difference"]["tasks"] == 2
    assert decision["difference"]["mean"] == pytest.approx(evaluation["new"]["reward"] - evaluation["parent"]["reward"],
                                                           abs=1e-3)
    assert decision["verdict"] in ("underpowered", "no gain") and decision["promote"] is False
    assert meta["promoted"] is result["promoted"] is False and registry.current() is None
    # Every stage left its output: ranked candidates and pairs whose chosen outscored the rejected.
    ranked = [json.loads(line) for line in (tmp_path / "iter1" / "actor" / "ranked.jsonl").read_text().splitlines()]
    assert len(ranked) == 6 and all(len(r["candidates"]) == len(r["scores"]) == 4 for r in ranked)  # 6 agent turns
    pairs = [json.loads(line) for line in (tmp_path / "iter1" / "actor" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    for stage in ("critic", "actor"):
        assert (tmp_path / "iter1" / stage / "curves.png").is_file()

    base, adapter = registry.resolve(version.id)
    tuned, plain = load_model(base, adapter=adapter), load_model(base)
    prompt = ranked[0]["prompt"]
    assert tuned.completion_logprobs(prompt, pairs[0]["chosen"]) != pytest.approx(
        plain.completion_logprobs(prompt, pairs[0]["chosen"]), abs=1e-4)
    assert isinstance(tuned.sample([[{"role": "user", "content": "Hi"}]], n=1)[0][0], str)

    # A second iteration starts from v0001: its actor keeps training v0001's adapter.
    assert main(loop_args(data, tmp_path / "iter2", tiny_model_dir, "--parent", "v0001",
                          "--critic-epochs", "1", "--eval-limit", "1")) == 0
    second = registry.get("v0002")
    assert second.parent == "v0001" and second.base == str(tiny_model_dir) and second.meta["promoted"] is False
    actor_config = json.loads((tmp_path / "iter2" / "actor" / "config.json").read_text())
    assert actor_config["model"] == "registry:v0001"
    # Re-running a finished iteration registers nothing new.
    assert main(loop_args(data, tmp_path / "iter2", tiny_model_dir, "--parent", "v0001")) == 0
    assert [v.id for v in registry.list_versions()] == ["v0001", "v0002"]


def test_a_candidate_identical_to_its_parent_is_not_promoted(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Rejection fine-tuning at learning rate 0 leaves the fresh LoRA's B = 0: the candidate *is* its
    parent. Rolled out on the same tasks, samples and seeds, every pair is identical and the gate,
    asked to promote on any gain (margin 0), finds none."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("COLLAB_HOME", str(tmp_path / "home"))
    data = rollouts_file(tmp_path / "rollouts.jsonl", AutoTokenizer.from_pretrained(tiny_model_dir))
    out = tmp_path / "same"
    assert main(loop_args(data, out, tiny_model_dir, "--algorithm", "rft", "--actor-learning-rate", "0",
                          "--eval-limit", "6", "--eval-samples", "2", "--promote-if-better",
                          "--promote-margin", "0")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    def turns(name):
        return {(e.task.id, e.meta["sample"]): [t.content for t in e.turns] for e in load_episodes(out / name).items}

    parent, new = turns("eval_parent.jsonl"), turns("eval_new.jsonl")
    assert len(parent) == 12 and parent == new  # same tasks, samples and seeds: the same episodes
    decision = result["evaluation"]["gate"]
    assert decision["difference"] == {"n": 12, "tasks": 6, "mean": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95}
    assert decision["verdict"] == "no gain" and decision["reason"].startswith("no gain: n=12, CI [0.000, 0.000]")
    assert result["promoted"] is False and result["reward_gain"] == 0.0
    registry = ModelRegistry()
    assert registry.current() is None  # not served
    recorded = registry.get(result["version"]).meta  # the registry keeps the decision with the version
    assert recorded["promoted"] is False and recorded["metrics"]["evaluation"]["gate"] == decision


def test_every_command_documents_its_defaults_and_the_loop_takes_db(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):  # the command list itself (a '%' in a summary broke it)
        parser.parse_args(["--help"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        assert "(default:" in capsys.readouterr().out
    args = parser.parse_args(["loop", "--db", "sessions.sqlite", "--promote-if-better"])
    assert args.data == "sessions.sqlite" and args.promote_if_better is True
    assert parser.parse_args(["critic"]).beta == 0.1 and parser.parse_args(["actor"]).nll_coef == 0.01
    assert main(["critic", "--data", "/nonexistent.jsonl"]) == 2  # a clear error, not a traceback


def test_metrics_and_win_rate_compare_the_same_task_and_sample():
    from simulators.domain import Episode
    from training.evaluate import metrics, win_rate

    def scored(task, reward, sample=0, **scores):
        return Episode(task=task, reward=reward, scores=scores, meta={"sample": sample})

    ours = [scored(TASKS[0], 1.0, success=True, tests_passed=1.0), scored(TASKS[1], 0.5, success=False, tests_passed=0.5),
            scored(TASKS[1], 0.0, sample=1, success=False, tests_passed=0.0)]
    theirs = [scored(TASKS[0], 0.5), scored(TASKS[1], 0.5), scored(TASKS[1], 1.0, sample=3)]
    assert metrics(ours) == {"n": 3, "reward": 0.5, "success_rate": 0.3333, "tests_passed": 0.5}
    # (add, 0): win; (top3, 0): tie; (top3, 1) has no match on their side.
    assert win_rate(ours, theirs) == {"win_rate": 0.75, "wins": 1, "ties": 1, "matched": 2}
