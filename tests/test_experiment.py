"""``python -m training experiment`` end to end with a tiny random model on our sample tasks: the
split, the base rollouts, SWEET-RL / multi-turn DPO / RFT and the critic ablations trained on them,
every agent evaluated on the same held-out tasks, results with paired CIs; re-runs and resumes.

The base agent is scripted, so that the rollouts hold both successes and failures to pair (a
tiny random model never solves a task): its good answer holds every backend reference of the
task file and one frontend page; the trained agents are the tiny model with their adapters.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from simulators.tasks import load_sample_tasks, write_tasks
from training.__main__ import build_parser, main
from training.experiment import ExperimentConfig, PaperExperimentConfig, command_line
from training.experiment.run import make_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = ["split", "rollouts", "train_sweet_critic", "train_sweet_actor", "train_mtdpo", "train_rft",
          "eval_zero_shot", "eval_sweet", "eval_mtdpo", "eval_rft",
          "train_no_privileged_critic", "train_no_privileged_actor", "eval_no_privileged",
          "train_value_head_critic", "train_value_head_actor", "eval_value_head",
          "train_no_length_normalize_critic", "train_no_length_normalize_actor", "eval_no_length_normalize",
          "eval_best_of_n"]
MAIN = ["zero_shot", "sweet", "mtdpo", "rft"]
ABLATIONS = ["no_privileged", "value_head", "no_length_normalize"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four tasks of each kind and the scripted base agent's replies (good, junk, junk, ...)."""
    root = tmp_path_factory.mktemp("experiment-world")
    backend, frontend = load_sample_tasks("backend")[:4], load_sample_tasks("frontend")[:4]
    tasks = root / "tasks.jsonl"
    write_tasks(backend + frontend, tasks)
    code = "\n\n".join(t.ground_truth for t in backend)
    good = f"I WANT TO ANSWER:\n```python\n{code}\n```\n{frontend[0].ground_truth}"
    script = root / "agent.json"
    # Replies cycle over the batch: with 2 tasks per kind x 2 samples in one batch of 8, three of the
    # four training tasks get one good and one junk episode, so every trainer has pairs.
    script.write_text(json.dumps([good, "I WANT TO ANSWER: no idea", "I WANT TO ANSWER: pass"]))
    return tasks, script


def experiment_args(out, tasks, script, tiny_model_dir, *extra):
    return ["experiment", "--out", str(out), "--tasks", str(tasks), "--train-tasks", "2", "--held-out", "2",
            "--model", str(tiny_model_dir), "--agent", f"scripted:{script}", "--simulator", str(tiny_model_dir),
            "--samples", "2", "--max-rounds", "2", "--max-new-tokens", "8", "--simulator-max-new-tokens", "4",
            "--critic-epochs", "1", "--critic-learning-rate", "5e-3", "--actor-learning-rate", "5e-3",
            "--data-fraction", "1.0", "--best-of-n", "2", "--pairs-per-turn", "1", "--lora-r", "4",
            "--gradient-accumulation-steps", "1", "--max-length", "512", "--critic-best-of-n", "2",
            "--study-held-out", "0", "--bootstrap-resamples", "200", "--no-progress", *extra]


def markers(out):
    return {p.stem: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}


def without_wall_times(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("stages", "total_wall_s")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_experiment_end_to_end_then_rerun_and_resume(world, tiny_model_dir, tmp_path, capsys):
    tasks, script = world
    out = tmp_path / "exp"
    args = experiment_args(out, tasks, script, tiny_model_dir)
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["results"] == str(out / "results.md")

    # 1. The split: recorded, disjoint, from the file given (with its hash).
    split = json.loads((out / "split.json").read_text())
    assert split["seed"] == 0
    assert split["source"] == [{"path": str(tasks), "sha256": hashlib.sha256(tasks.read_bytes()).hexdigest()}]
    for kind in ("backend", "frontend"):
        train, held_out = split["kinds"][kind]["train"], split["kinds"][kind]["held_out"]
        assert len(train) == len(held_out) == 2 and not set(train) & set(held_out)

    # Every stage finished and left its marker with its wall time.
    assert sorted(markers(out)) == sorted(STAGES)
    for stage in STAGES:
        assert json.loads((out / "stages" / f"{stage}.json").read_text())["wall_s"] >= 0

    results = json.loads((out / "results.json").read_text())
    # Every method really trained on the base rollouts (the scripted agent made pairs and a success).
    assert results["training"].keys() == {s.removeprefix("train_") for s in STAGES if s.startswith("train_")}
    assert not [s for s, r in results["training"].items() if "not_trained" in r]
    # 4. The same held-out tasks for every agent: main methods on both kinds, critic studies on backend.
    for kind, metric in (("backend", "tests_passed"), ("frontend", "design")):
        table = results["scorers"]["ours"][kind]
        expected = MAIN + (ABLATIONS if kind == "backend" else [])
        assert list(table["methods"]) == expected and metric in table["metrics"]
        for method in expected:
            row = table["methods"][method]
            assert row["n"] == 2 and isinstance(row["mean"][metric], float)
            if method != "zero_shot":
                d = row["difference"][metric]
                assert d["n"] == 2 and d["tasks"] == 2 and d["low"] <= d["mean"] <= d["high"]
                assert d["verdict"] in ("promote", "underpowered", "no gain")
                assert row["win_rate"]["matched"] == 2
    # The scripted zero-shot agent solves one of the two held-out backend tasks; the tiny model none.
    backend = results["scorers"]["ours"]["backend"]["methods"]
    assert backend["zero_shot"]["mean"]["success"] == 0.5
    # Both scorers on the same episodes; best-of-N apart, never among the agents.
    assert list(results["scorers"]["colbench"]) == ["backend"]
    assert results["scorers"]["colbench"]["backend"]["methods"]["sweet"]["n"] == 2
    assert results["best_of_n"]["ours"]["backend"]["methods"]["best_of_n"]["n"] == 2
    assert (out / "eval" / "sweet.colbench.jsonl").is_file()
    assert results["verdicts"]["ours"]["backend"] and results["stages"].keys() == set(STAGES)

    text = (out / "results.md").read_text()
    assert "## Backend (scorer: ours)" in text and "## Frontend (scorer: ours)" in text
    assert "## Backend (scorer: colbench)" in text and "Critic best-of-2, backend" in text
    assert "| method | n | success | Δ success [95% CI] | tests_passed |" in text
    assert "| SWEET-RL | 2 |" in text and "| eval_best_of_n |" in text
    assert (out / "results.png").stat().st_size > 0

    # A re-run reuses every stage: nothing is redone, the results are the same.
    before = markers(out)
    assert main(args) == 0
    assert markers(out) == before
    assert json.loads((out / "results.json").read_text()) == results

    # A run killed between stages: only the stage without its marker runs again.
    (out / "stages" / "eval_rft.json").unlink()
    assert main(args) == 0
    after = markers(out)
    assert after.keys() == before.keys() and after["eval_rft"] != before["eval_rft"]
    assert {s: t for s, t in after.items() if s != "eval_rft"} == {s: t for s, t in before.items() if s != "eval_rft"}
    assert without_wall_times(json.loads((out / "results.json").read_text())) == without_wall_times(results)

    # Other settings in the same directory are refused, not mixed in.
    capsys.readouterr()
    assert main(experiment_args(out, tasks, script, tiny_model_dir, "--held-out", "1")) == 2
    assert "held_out: 2 -> 1" in capsys.readouterr().err


def test_preset_first_then_every_option_overrides_it():
    parser = build_parser(["experiment", "--preset", "paper"])
    paper = parser.parse_args(["experiment", "--preset", "paper", "--max-rounds", "4"])
    assert paper.max_rounds == 4 and paper.temperature == 1.0 and paper.max_new_tokens == 1024  # the rest: paper's
    assert paper.best_of_n == 16 and paper.pairing == "auto"
    small = build_parser(["experiment"]).parse_args(["experiment"])
    assert (small.preset, small.max_rounds, small.held_out) == ("cpu-small", 3, 16)
    config = PaperExperimentConfig(max_rounds=4, simulator_vision=True)
    assert command_line(config) == ("python -m training experiment --preset paper --out runs/experiment-paper "
                                    "--simulator-vision --max-rounds 4")
    assert command_line(ExperimentConfig(tasks="a b.jsonl")) == (
        "python -m training experiment --preset cpu-small --out runs/experiment --tasks 'a b.jsonl'")
    with pytest.raises(SystemExit):
        build_parser(["experiment", "--preset", "huge"])


def test_split_is_disjoint_per_kind_and_says_when_tasks_are_too_few(tmp_path):
    config = ExperimentConfig(tasks="samples", train_tasks=5, held_out=6, split_seed=3)
    sizes = make_split(config, tmp_path)
    assert sizes == {"backend": {"train": 5, "held_out": 6}, "frontend": {"train": 5, "held_out": 6}}
    split = json.loads((tmp_path / "split.json").read_text())
    for side in split["kinds"].values():
        assert not set(side["train"]) & set(side["held_out"])
    assert [f["path"].rsplit("/", 1)[-1] for f in split["source"]] == ["backend_samples.jsonl",
                                                                       "frontend_samples.jsonl"]
    assert make_split(config, tmp_path / "again") == sizes  # the same seed, the same split
    assert json.loads((tmp_path / "again" / "split.json").read_text())["kinds"] == split["kinds"]
    with pytest.raises(ValueError, match="frontend: the split needs 8 held-out and 5 training"):
        make_split(ExperimentConfig(tasks="samples", train_tasks=5, held_out=8), tmp_path / "short")


def test_methods_without_training_data_are_reported_not_trained(world, tiny_model_dir, tmp_path, capsys):
    """A random base agent never scores: nothing to pair or to imitate, so every method that needs
    pairs or a good trajectory is "not trained" with the trainer's reason, and is reported so. (The
    value-head critic regresses on every outcome, so it trains, on zeros; its actor then finds every
    candidate scored alike and has no pair either.)"""
    tasks, _ = world
    out = tmp_path / "exp"
    args = experiment_args(out, tasks, "unused", tiny_model_dir, "--agent", "", "--kinds", "backend",
                           "--study-kinds", "backend")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["base_rollouts"]["backend"] == {"n": 4, "reward": 0.0, "success_rate": 0.0, "tests_passed": 0.0}
    untrained = {stage for stage, summary in results["training"].items() if "not_trained" in summary}
    assert untrained == set(results["training"]) - {"value_head_critic"}
    assert "scored alike" in results["training"]["value_head_actor"]["not_trained"]
    assert "no trajectory pairs" in results["training"]["sweet_critic"]["not_trained"]
    assert "--min-reward 0.5" in results["training"]["rft"]["not_trained"]
    assert list(results["scorers"]["ours"]["backend"]["methods"]) == ["zero_shot"]
    assert set(results["not_evaluated"]) == {"SWEET-RL", "multi-turn DPO", "RFT", "SWEET, critic without c",
                                             "SWEET, value-head critic", "SWEET, no length normalisation",
                                             "critic best-of-N"}
    text = (out / "results.md").read_text()
    assert "Only zero-shot was evaluated: no trained method to compare" in text
    assert "* RFT: not trained: no trajectory reaches --min-reward 0.5" in text


def test_a_separate_held_out_file_gives_the_held_out_side(tmp_path):
    from simulators.tasks import SAMPLE_TASKS_DIR

    held_file = SAMPLE_TASKS_DIR / "backend_samples.jsonl"
    config = ExperimentConfig(tasks="samples", held_out_tasks=str(held_file), kinds="backend", train_tasks=0,
                              held_out=6)
    assert make_split(config, tmp_path) == {"backend": {"train": 18, "held_out": 6}}  # 24 sample tasks in all
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["held_out_source"] == [{"path": str(held_file),
                                         "sha256": hashlib.sha256(held_file.read_bytes()).hexdigest()}]
    assert not set(split["kinds"]["backend"]["train"]) & set(split["kinds"]["backend"]["held_out"])
