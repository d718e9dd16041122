"""Task files and sweet_rl trajectory files: reading, writing, malformed lines."""

import json
from pathlib import Path

import pytest

from simulators.domain import ANSWER_MARKER, Episode, Task, Turn
from simulators.tasks import TaskFileError, load_sample_tasks, load_tasks, write_tasks
from simulators.trajectories import append_episode, load_episodes, write_episodes

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "colbench"

BACKEND_ROW = {
    "problem_description": "Write a function that adds. The signature of the function is: def add(a, b)",
    "ground_truth": "def add(a, b):\n    return a + b",
    "test_cases": {f"test{i}": f"add({i}, {i})" for i in range(1, 11)},
    "hidden_information": "def add(a, b):\n    return a + b",
}
FRONTEND_ROW = {"problem_description": "A bakery page.", "ground_truth": "<html><body><h1>Bread</h1></body></html>"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_both_kinds_and_reports_malformed_lines_with_line_numbers(tmp_path):
    path = write_lines(tmp_path / "tasks.jsonl", [
        json.dumps(BACKEND_ROW),
        "{not json",
        "",
        json.dumps({"problem_description": "no reference"}),
        json.dumps(FRONTEND_ROW),
        json.dumps({**BACKEND_ROW, "test_cases": {"t": 3}}),
    ])
    report = load_tasks(path)
    assert [t.kind for t in report.items] == ["backend", "frontend"]
    assert report.items[0].source == f"{path}:1"
    assert len(report.errors) == 3
    assert report.errors[0].startswith(f"{path}:2: invalid JSON")
    assert report.errors[1] == f"{path}:4: missing or empty 'ground_truth'"
    assert report.errors[2].startswith(f"{path}:6: 'test_cases' must map")


def test_a_file_with_no_valid_task_is_an_error(tmp_path):
    with pytest.raises(TaskFileError, match=r"no valid task; first problem: .*:1: invalid JSON"):
        load_tasks(write_lines(tmp_path / "bad.jsonl", ["nope"]))
    with pytest.raises(TaskFileError, match="no such file"):
        load_tasks(tmp_path / "missing.jsonl")


def test_task_ids_are_stable_and_round_trip(tmp_path):
    first = load_tasks(write_lines(tmp_path / "a.jsonl", [json.dumps(BACKEND_ROW)])).items[0]
    write_tasks([first], tmp_path / "b.jsonl")
    again = load_tasks(tmp_path / "b.jsonl").items[0]
    assert again.id == first.id and again.test_cases == first.test_cases
    assert again.hidden_information == BACKEND_ROW["hidden_information"]


def test_frontend_hidden_information_defaults_to_the_reference_page():
    task = Task(id="f", kind="frontend", problem_description="p", ground_truth="<html></html>")
    assert task.hidden_information == "<html></html>" == task.privileged_information


def test_episode_round_trips_through_sweet_rl_jsonl(tmp_path):
    task = load_tasks(write_lines(tmp_path / "t.jsonl", [json.dumps(BACKEND_ROW)])).items[0]
    episode = Episode(task=task, turns=[
        Turn("human", task.problem_description),
        Turn("agent", "What types?", input="<prompt>", output="What types?", model="m", latency_s=0.5),
        Turn("human", "Integers."),
        Turn("agent", f"{ANSWER_MARKER} def add(a, b): return a + b", input="<p2>",
             output=f"{ANSWER_MARKER} def add(a, b): return a + b", model="m"),
    ], answer="def add(a, b): return a + b", reward=1.0, scores={"success": True}, meta={"sample": 2})
    out = tmp_path / "rollouts.jsonl"
    append_episode(episode, out)
    row = json.loads(out.read_text())
    assert [t["role"] for t in row["dialogue_history"]] == ["user", "assistant", "user", "assistant"]
    assert row["dialogue_history"][1] == {"role": "assistant", "content": "What types?", "input": "<prompt>",
                                          "output": "What types?", "model": "m", "latency_s": 0.5}
    loaded = load_episodes(out).items[0]
    assert loaded.turns == episode.turns and loaded.reward == 1.0 and loaded.meta == {"sample": 2}
    assert loaded.task == episode.task and loaded.rounds == 2 and loaded.success is True


def test_reads_reference_style_trajectories_and_reports_bad_lines(tmp_path):
    """A trajectory as sweet_rl writes it: no scores/meta, output equal to content."""
    reference_style = {"task": BACKEND_ROW, "dialogue_history": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "q?", "input": "prompt", "output": "q?"}], "answer": "x", "reward": 0.3}
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(reference_style), json.dumps({"task": {}}), "[]"])
    report = load_episodes(path)
    assert len(report.items) == 1 and report.items[0].reward == 0.3
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{path}:2", f"{path}:3"]
    write_episodes(report.items, tmp_path / "copy.jsonl")
    assert load_episodes(tmp_path / "copy.jsonl").items[0].turns[1].input == "prompt"


def test_sample_tasks_are_ours_and_well_formed():
    tasks = load_sample_tasks()
    backend = [t for t in tasks if t.kind == "backend"]
    frontend = [t for t in tasks if t.kind == "frontend"]
    assert len(backend) >= 20 and len(frontend) >= 10
    assert all(len(t.test_cases) == 10 for t in backend)
    assert len({t.id for t in tasks}) == len(tasks)
    assert all("The signature of the function is" in t.problem_description for t in backend)


def test_reads_the_shared_colbench_files_when_present():
    files = sorted(SHARED.glob("*_dev.jsonl"))
    for path in files:
        report = load_tasks(path)
        assert len(report.items) == 600 and not report.errors
        assert {t.kind for t in report.items} == {path.name.split("_")[0]}
    assert files or not SHARED.exists()
