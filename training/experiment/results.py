"""The experiment's results, written again after each evaluation from what is finished:
``results.json``, ``results.md`` (tables per kind and scorer, training, wall time per stage) and
``results.png`` (each method's paired difference from zero-shot with its 95% CI)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from simulators.domain import Episode
from simulators.trajectories import load_episodes
from training.evaluate import metrics, win_rate
from training.experiment.config import ABLATIONS, KINDS, ExperimentConfig, command_line, names, other_scorers
from training.experiment.workdir import Stages, eval_file
from training.stats import compare_episodes, gate

LABELS = {
    "zero_shot": "zero-shot",
    "sweet": "SWEET-RL",
    "mtdpo": "multi-turn DPO",
    "rft": "RFT",
    "no_privileged": "SWEET, critic without c",
    "value_head": "SWEET, value-head critic",
    "no_length_normalize": "SWEET, no length normalisation",
    "best_of_n": "critic best-of-N",
}
# What each kind's table reports (keys of Episode.scores); the means come from training.evaluate.metrics.
KIND_METRICS = {"backend": ("success", "tests_passed"), "frontend": ("clip", "design")}
MEAN_KEYS = {"success": "success_rate"}


def method_order(config: ExperimentConfig) -> list[str]:
    return ["zero_shot", "sweet", "mtdpo", "rft", *names(config.ablations, list(ABLATIONS), "ablation")]


def compare_rows(config: ExperimentConfig, kind: str, methods: dict[str, list[Episode]]) -> dict:
    """Per method: n, means, win rate and paired difference from zero-shot (same task and sample)."""
    zero = methods["zero_shot"]
    present = [m for m in KIND_METRICS[kind] if any(isinstance(e.scores.get(m), (int, float)) for e in zero)]
    rows = {}
    for method, episodes in methods.items():
        summary = metrics(episodes)
        row: dict = {"label": LABELS[method], "n": summary["n"],
                     "mean": {m: summary.get(MEAN_KEYS.get(m, m)) for m in present}}
        if method != "zero_shot":
            row["baseline_mean"] = {m: metrics(matched(zero, episodes)).get(MEAN_KEYS.get(m, m)) for m in present}
            row["win_rate"] = win_rate(episodes, zero)
            row["difference"] = {}
            for m in present:
                try:
                    difference = compare_episodes(episodes, zero, m, resamples=config.bootstrap_resamples,
                                                  seed=config.seed)
                except ValueError:  # no (task, sample) scored on both sides
                    continue
                row["difference"][m] = {**difference.as_dict(), "verdict": gate(difference).verdict}
        rows[method] = row
    return {"metrics": present, "methods": rows}


def matched(episodes: Sequence[Episode], others: Sequence[Episode]) -> list[Episode]:
    """The episodes of ``episodes`` whose (task, sample) ``others`` also played."""
    keys = {e.sample_key for e in others}
    return [e for e in episodes if e.sample_key in keys]


def read_evaluations(out: Path, methods: Sequence[str], scorer: str | None, stages: Stages) -> dict[str, list[Episode]]:
    """The held-out episodes of every evaluated method (of ``scorer``'s re-scoring when given)."""
    found = {}
    for method in methods:
        marker = stages.marker(f"eval_{method}")
        path = eval_file(out, method, scorer)
        if marker is not None and "not_evaluated" not in marker["summary"] and path.is_file():
            found[method] = load_episodes(path).items
    return found


def build_results(config: ExperimentConfig, out: Path, stages: Stages) -> dict:
    split = json.loads((out / "split.json").read_text())
    kinds = names(config.kinds, KINDS, "kind")
    scorers: dict[str, dict] = {}
    best_of_n: dict[str, dict] = {}
    for scorer in [config.scoring, *other_scorers(config)]:
        primary = scorer == config.scoring
        evaluated = read_evaluations(out, [*method_order(config), "best_of_n"], None if primary else scorer, stages)
        if "zero_shot" not in evaluated:
            continue
        tables = {}
        for kind in kinds if primary else ["backend"]:
            of_kind = {m: [e for e in eps if e.task.kind == kind] for m, eps in evaluated.items()}
            if not of_kind["zero_shot"]:
                continue
            agents = {m: of_kind[m] for m in method_order(config) if of_kind.get(m)}
            tables[kind] = compare_rows(config, kind, agents)
            if of_kind.get("best_of_n"):
                study = compare_rows(config, kind, {"zero_shot": matched(of_kind["zero_shot"], of_kind["best_of_n"]),
                                                    "best_of_n": of_kind["best_of_n"]})
                best_of_n.setdefault(scorer, {})[kind] = study
        scorers[scorer] = tables
    training, not_evaluated = {}, {}
    for record in stages.finished():
        if record["stage"].startswith("train_"):
            training[record["stage"].removeprefix("train_")] = record["summary"]
        if record["stage"].startswith("eval_") and "not_evaluated" in record["summary"]:
            not_evaluated[LABELS[record["stage"].removeprefix("eval_")]] = record["summary"]["not_evaluated"]
    verdicts = {scorer: {kind: verdict_line(table) for kind, table in tables.items()}
                for scorer, tables in scorers.items()}
    zero_shot = load_episodes(eval_file(out, "zero_shot")).items if eval_file(out, "zero_shot").is_file() else []
    clip_missing = next((e.scores["clip_unavailable"] for e in zero_shot if "clip_unavailable" in e.scores), None)
    return {
        "preset": config.preset, "command": command_line(config), "config": asdict(config),
        "split": {"seed": split["seed"], "source": split["source"], "held_out_source": split["held_out_source"],
                  "tasks": {kind: {side: len(ids) for side, ids in s.items()} for kind, s in split["kinds"].items()}},
        "base_rollouts": {kind: metrics([e for e in load_episodes(out / "rollouts.jsonl").items if e.task.kind == kind])
                          for kind in kinds} if (out / "rollouts.jsonl").is_file() else {},
        "scorers": scorers, "best_of_n": best_of_n, "training": training, "verdicts": verdicts,
        "not_evaluated": not_evaluated,
        "clip_unavailable": clip_missing,
        "stages": {r["stage"]: r["wall_s"] for r in stages.finished()},
        "total_wall_s": round(sum(r["wall_s"] for r in stages.finished()), 1),
    }


def verdict_line(table: dict) -> str:
    """Which methods beat zero-shot beyond the 95% CI (training.stats.gate's "promote"), or that none did."""
    if len(table["methods"]) == 1:
        return "Only zero-shot was evaluated: no trained method to compare (see Training)."
    better, worse = [], []
    for row in table["methods"].values():
        for metric, d in row.get("difference", {}).items():
            if d["verdict"] == "promote":
                better.append(f"{row['label']} ({metric} {d['mean']:+.3f}, CI [{d['low']:.3f}, {d['high']:.3f}])")
            elif d["high"] < 0:
                worse.append(f"{row['label']} ({metric} {d['mean']:+.3f}, CI [{d['low']:.3f}, {d['high']:.3f}])")
    line = ("Beats zero-shot beyond its 95% CI: " + "; ".join(better)) if better else \
        "No method beats zero-shot beyond its 95% CI."
    return line + (" Worse than zero-shot beyond its CI: " + "; ".join(worse) + "." if worse else "")


def write_results(config: ExperimentConfig, out: Path, stages: Stages) -> dict:
    from training.plots import plot_paired_differences

    results = build_results(config, out, stages)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(results_markdown(results))
    panels = []
    for kind, table in results["scorers"].get(config.scoring, {}).items():
        for metric in table["metrics"]:
            rows = [(row["label"], row["difference"][metric]) for row in table["methods"].values()
                    if metric in row.get("difference", {})]
            panels.append((f"{kind}: {metric}", [(label, d["mean"], d["low"], d["high"]) for label, d in rows]))
    plot_paired_differences(panels, out / "results.png",
                            title=f"difference from zero-shot, 95% CI ({config.preset}, scoring {config.scoring})")
    return results


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _number(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def results_markdown(results: dict) -> str:
    config = results["config"]
    lines = [f"# Experiment results: preset `{results['preset']}`", "", f"    {results['command']}", "",
             f"Base agent `{config['agent'] or config['model']}`, trained model `{config['model']}`, simulator "
             f"`{config['simulator']}`"
             f"{' (vision)' if config['simulator_vision'] else ''}; {config['max_rounds']} rounds, agent turns of at "
             f"most {config['max_new_tokens']} tokens, temperature {config['temperature']}, seed {config['seed']} for "
             "every agent. Split (seed "
             f"{results['split']['seed']}): " + "; ".join(
                 f"{kind} {s['train']} training tasks x {config['samples']} rollouts, {s['held_out']} held-out x "
                 f"{config['eval_samples']}" for kind, s in results["split"]["tasks"].items()) + ".", ""]
    if results["not_evaluated"]:
        lines += ["Not evaluated, for want of training data (see Training):", ""]
        lines += [f"* {label}: {reason}" for label, reason in results["not_evaluated"].items()] + [""]
    if results["clip_unavailable"]:
        lines += [f"CLIP was not computed (frontend rewards are the design score): {results['clip_unavailable']}", ""]
    for scorer, tables in results["scorers"].items():
        for kind, table in tables.items():
            lines += [f"## {kind.capitalize()} (scorer: {scorer})", "", results["verdicts"][scorer][kind], ""]
            lines += comparison_table(table)
    for scorer, tables in results["best_of_n"].items():
        for kind, table in tables.items():
            lines += [f"## Critic best-of-{config['critic_best_of_n']}, {kind} (scorer: {scorer}; paper Fig. 3a)", "",
                      "The base agent with every turn picked by SWEET's critic out of "
                      f"{config['critic_best_of_n']} candidates: a measure of the critic, not an agent's score. "
                      + verdict_line(table), ""]
            lines += comparison_table(table)
    lines += ["## Base rollouts (training data)", "", "| kind | n | " + " | ".join(KIND_METRICS["backend"] +
                                                                               KIND_METRICS["frontend"]) + " |",
              "|---|---|" + "---|" * 4]
    for kind, summary in results["base_rollouts"].items():
        cells = [_number(summary.get(MEAN_KEYS.get(m, m))) for m in KIND_METRICS["backend"] + KIND_METRICS["frontend"]]
        lines.append(f"| {kind} | {summary['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Training", "", "| stage | result |", "|---|---|"]
    for stage, summary in results["training"].items():
        lines.append(f"| {stage} | {training_cell(summary)} |")
    lines += ["", "## Wall time per stage", "", "| stage | wall time |", "|---|---|"]
    lines += [f"| {stage} | {duration(seconds)} |" for stage, seconds in results["stages"].items()]
    lines += [f"| total | {duration(results['total_wall_s'])} |", ""]
    return "\n".join(lines)


def comparison_table(table: dict) -> list[str]:
    """One row per method: n, each metric's mean and its paired difference from zero-shot [95% CI] (bold:
    beyond the CI, ``training.stats.gate``), and the win rate over zero-shot (matched episodes)."""
    header = "| method | n |" + "".join(f" {m} | Δ {m} [95% CI] |" for m in table["metrics"]) + " win rate (pairs) |"
    lines = [header, "|---" * (3 + 2 * len(table["metrics"])) + "|"]
    everyone = table["methods"]["zero_shot"]["n"]
    for row in table["methods"].values():
        cells = [row["label"], str(row["n"])]
        for metric in table["metrics"]:
            mean = _number(row["mean"].get(metric))
            if row["n"] < everyone:  # played a subset: zero-shot's mean on the same episodes, for reading the Δ
                mean += f" (zero-shot {_number(row['baseline_mean'].get(metric))})"
            cells.append(mean)
            d = row.get("difference", {}).get(metric)
            cells.append("–" if d is None else
                         f"{'**' if d['verdict'] == 'promote' else ''}{d['mean']:+.3f} [{d['low']:+.3f}, "
                         f"{d['high']:+.3f}]{'**' if d['verdict'] == 'promote' else ''}")
        win = row.get("win_rate")
        cells.append("–" if win is None else f"{win['win_rate']:.3f} ({win['matched']})")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def training_cell(summary: dict) -> str:
    if "not_trained" in summary:
        return f"not trained: {summary['not_trained']}"
    keys = ("pairs", "train_pairs", "eval_pairs", "trajectories", "prompts", "steps", "train_accuracy",
            "eval_accuracy", "loss")
    return ", ".join(f"{k} {summary[k]:.3g}" if isinstance(summary[k], float) else f"{k} {summary[k]}"
                     for k in keys if k in summary)
