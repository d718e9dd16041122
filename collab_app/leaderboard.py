"""Leaderboard: Bradley–Terry ratings from the Compare tab's votes, beside automatic ColBench scores
(shown by the Leaderboard tab, ``collab_app.tabs.leaderboard``, and printed by
``python -m collab_app leaderboard``, ``collab_app.commands.leaderboard``).

Ratings are computed as chat arenas compute them: a Bradley–Terry model, P(i beats j) =
1 / (1 + 10^((R_j - R_i) / 400)), fitted to all votes at once by maximum likelihood (logistic
regression on the rating differences, solved with Newton's method in numpy) and put on the Elo
scale anchored at a mean of 1000. The battles are first collapsed into their unique outcomes
(model a, model b, score) with counts as weights, so a fit costs the same for 10 votes or 10^5. A
tie counts half a win for each side; "both bad" counts as a tie too, as in Chatbot Arena (neither
reply was preferred). A weak Gaussian prior on the ratings (``L2``) keeps a model that never lost
finite. 95% confidence intervals come from the bootstrap: the votes are resampled with replacement
(a multinomial draw of the unique outcomes' counts), the ratings refitted, and the 2.5th and 97.5th
percentiles taken (a model absent from a resample has no rating in it).

Only blind votes are rated by default: the arena's (the Compare tab drew the pair from the pool,
the person never saw the names before the final vote). Votes of the developers' "choose two
models" mode (the person typed both specs) are left out, and the note says how many
(``--include-unblind`` counts them).

Which votes: ``final`` (default) — one overall vote per comparison, like an arena battle;
``round`` — one vote per round (more data, but the rounds of one comparison are not independent);
``all`` — both.

Next to the ratings: each model version's automatic scores, the mean reward and success rate of
its scored sessions in the store (any mode), and of held-out rollouts: from the rollout files
given (sweet_rl JSONL from ``python -m simulators rollout``, grouped by ``agent_model``), else,
for a registry version, from the evaluation gate of the run that trained it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulators.domain import Episode
from simulators.store import SessionStore, Vote

ELO_SCALE = 400.0
ELO_BASE = 10.0
ELO_ANCHOR = 1000.0
L2 = 0.1  # prior precision on log-strengths: a standard deviation of ~3.2 logits (~550 Elo points)
BOOTSTRAP_ROUNDS = 1000
VOTE_SETS = ("final", "round", "all")
SCORE_OF_WINNER = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # model a's score in the battle


@dataclass(frozen=True)
class Battle:
    """One vote between two models: ``winner`` is a/b/tie/both_bad, for positions a/b."""

    model_a: str
    model_b: str
    winner: str


def stored_battles(store: SessionStore, votes: str = "final", include_unblind: bool = False) -> list[Battle]:
    """The Compare tab's votes (feedback of kind ``vote`` with two named models); blind ones only
    (the arena's) unless ``include_unblind``."""
    return _battles(store.votes(), votes, include_unblind)


def _battles(records: Sequence[Vote], votes: str, include_unblind: bool) -> list[Battle]:
    if votes not in VOTE_SETS:
        raise ValueError(f"votes must be one of {', '.join(VOTE_SETS)}, not {votes!r}")
    return [Battle(v.model_a, v.model_b, v.winner) for v in records
            if v.model_a and v.model_b and v.winner in SCORE_OF_WINNER and (include_unblind or v.blind)
            and (votes == "all" or v.final == (votes == "final"))]


def left_out_note(store: SessionStore, votes: str = "final", include_unblind: bool = False) -> str:
    """Why stored votes are not in the ratings, said rather than dropped silently: votes that
    were not blind, a model compared with itself (two specs serving one version), and the votes
    of the other set."""
    records = store.votes()  # read once; each count below is a filter of them
    chosen = _battles(records, votes, include_unblind)
    with_itself = [b for b in chosen if b.model_a == b.model_b]
    lines = []
    if len(chosen) == len(with_itself):
        lines.append("No votes to rate yet: play a blind battle in the Compare tab's arena.")
    unblind = len(_battles(records, votes, True)) - len(_battles(records, votes, False))
    if unblind and not include_unblind:
        lines.append(f"{unblind} vote(s) of the “choose two models” mode left out: the person knew which two "
                     "models they compared. Tick “Include votes that were not blind” to count them.")
    if with_itself:
        models = ", ".join(f"`{m}`" for m in sorted({b.model_a for b in with_itself}))
        lines.append(f"{len(with_itself)} vote(s) left out: they compare a model with itself ({models}), which says "
                     "nothing about its rating. Two specs can serve the same model (`default` and `current` before "
                     "any promotion).")
    others = len(_battles(records, "all", include_unblind)) - len(chosen)
    if others:
        lines.append(f"{others} {'round' if votes == 'final' else 'final'} vote(s) are not counted in this view; "
                     "choose “All votes” to include them.")
    return "\n\n".join(lines)


# -- Bradley–Terry --------------------------------------------------------------------------------
def _encode(battles: Sequence[Battle], models: Sequence[str]) -> tuple[np.ndarray, ...]:
    """The unique outcomes: index arrays of the two sides, model a's score, and how many battles
    had that outcome (the weight). A model against itself says nothing."""
    index = {m: k for k, m in enumerate(models)}
    outcomes: dict[tuple[int, int, float], int] = {}
    for b in battles:
        if b.model_a != b.model_b:
            key = (index[b.model_a], index[b.model_b], SCORE_OF_WINNER[b.winner])
            outcomes[key] = outcomes.get(key, 0) + 1
    first = np.array([a for a, _, _ in outcomes], dtype=np.int64)
    second = np.array([b for _, b, _ in outcomes], dtype=np.int64)
    score = np.array([s for _, _, s in outcomes], dtype=float)
    return first, second, score, np.array(list(outcomes.values()), dtype=float)


def _fit_strengths(first: np.ndarray, second: np.ndarray, score: np.ndarray, count: np.ndarray, n_models: int,
                   l2: float = L2) -> np.ndarray:
    """Maximum a-posteriori log-strengths (natural-log odds scale) by damped Newton steps, each
    unique outcome weighted by its ``count``.

    The penalised log-likelihood is strictly concave, so Newton's method converges; steps are
    capped at 2 logits so a nearly separable start cannot overshoot."""
    theta = np.zeros(n_models)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(theta[second] - theta[first]))  # P(first beats second)
        residual = count * (score - p)
        gradient = (np.bincount(first, residual, n_models) - np.bincount(second, residual, n_models)
                    - l2 * theta)
        weight = count * p * (1.0 - p)
        # Negative Hessian: a weighted graph Laplacian of the battles, plus the prior.
        curvature = np.diag(np.bincount(first, weight, n_models) + np.bincount(second, weight, n_models) + l2)
        np.add.at(curvature, (first, second), -weight)
        np.add.at(curvature, (second, first), -weight)
        step = np.clip(np.linalg.solve(curvature, gradient), -2.0, 2.0)
        theta += step
        if np.abs(step).max() < 1e-9:
            break
    return theta


def _to_elo(theta: np.ndarray) -> np.ndarray:
    return ELO_ANCHOR + ELO_SCALE / math.log(ELO_BASE) * (theta - theta.mean())


def fit_ratings(battles: Sequence[Battle], l2: float = L2) -> dict[str, float]:
    """Elo-scale Bradley–Terry ratings of every model that appears in ``battles`` (mean 1000)."""
    models = _models_of(battles)
    if not models:
        return {}
    theta = _fit_strengths(*_encode(battles, models), len(models), l2)
    return dict(zip(models, _to_elo(theta).tolist()))


def bootstrap_intervals(battles: Sequence[Battle], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                        l2: float = L2) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of each rating over ``rounds`` resamples of the votes (each a
    multinomial draw of the unique outcomes' counts: resampling the votes with replacement)."""
    models = _models_of(battles)
    if not models or rounds <= 0:
        return {}
    first, second, score, count = _encode(battles, models)
    rng = np.random.default_rng(seed)
    samples = np.full((rounds, len(models)), np.nan)
    for r in range(rounds):
        drawn = rng.multinomial(int(count.sum()), count / count.sum()).astype(float)
        pick = drawn > 0
        present = np.unique(np.concatenate([first[pick], second[pick]]))
        # Refit on the models present, so an absent one neither anchors nor skews the mean.
        remap = np.full(len(models), -1)
        remap[present] = np.arange(len(present))
        theta = _fit_strengths(remap[first[pick]], remap[second[pick]], score[pick], drawn[pick], len(present), l2)
        samples[r, present] = _to_elo(theta)
    lower, upper = np.nanpercentile(samples, [2.5, 97.5], axis=0)
    return {m: (float(lo), float(hi)) for m, lo, hi in zip(models, lower, upper)}


def _models_of(battles: Iterable[Battle]) -> list[str]:
    return sorted({m for b in battles if b.model_a != b.model_b for m in (b.model_a, b.model_b)})


# -- the table ------------------------------------------------------------------------------------
@dataclass
class LeaderboardRow:
    model: str
    rating: float | None = None
    lower: float | None = None
    upper: float | None = None
    battles: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    sessions: int = 0  # scored sessions in the store
    mean_reward: float | None = None
    success_rate: float | None = None  # over sessions whose scores say success or not (backend)
    heldout_episodes: int = 0
    heldout_reward: float | None = None
    heldout_success_rate: float | None = None


def _score_summary(episodes: Sequence[Episode]) -> tuple[int, float | None, float | None]:
    rewards = [e.reward for e in episodes if e.reward is not None]
    successes = [bool(e.scores["success"]) for e in episodes if "success" in e.scores]
    return (len(episodes), sum(rewards) / len(rewards) if rewards else None,
            sum(successes) / len(successes) if successes else None)


def leaderboard(store: SessionStore, *, votes: str = "final", rollout_files: Sequence[str | Path] = (),
                bootstrap_rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                include_unblind: bool = False) -> list[LeaderboardRow]:
    """Every model that was voted on, scored in the store or rolled out, best rating first."""
    from simulators.trajectories import load_episodes

    battles = stored_battles(store, votes, include_unblind)
    ratings = fit_ratings(battles)
    intervals = bootstrap_intervals(battles, bootstrap_rounds, seed)
    rows: dict[str, LeaderboardRow] = {}

    def row(model: str) -> LeaderboardRow:
        return rows.setdefault(model, LeaderboardRow(model))

    for battle in battles:
        if battle.model_a == battle.model_b:
            continue
        a, b = row(battle.model_a), row(battle.model_b)
        a.battles, b.battles = a.battles + 1, b.battles + 1
        if battle.winner == "a":
            a.wins, b.losses = a.wins + 1, b.losses + 1
        elif battle.winner == "b":
            b.wins, a.losses = b.wins + 1, a.losses + 1
        else:
            a.ties, b.ties = a.ties + 1, b.ties + 1
    for model, rating in ratings.items():
        row(model).rating = rating
        row(model).lower, row(model).upper = intervals.get(model, (None, None))
    by_model: dict[str, list[Episode]] = {}
    for episode in store.episodes(status="scored", limit=10**9):
        by_model.setdefault(episode.agent_model or "?", []).append(episode)
    for model, episodes in by_model.items():
        entry = row(model)
        entry.sessions, entry.mean_reward, entry.success_rate = _score_summary(episodes)
    heldout: dict[str, list[Episode]] = {}
    for path in rollout_files:
        for episode in load_episodes(path).items:
            heldout.setdefault(episode.agent_model or "?", []).append(episode)
    for model, episodes in heldout.items():
        entry = row(model)
        entry.heldout_episodes, entry.heldout_reward, entry.heldout_success_rate = _score_summary(episodes)
    for model, gate in registry_evaluations().items():  # no rollout file for it: its evaluation gate
        entry = row(model)
        if not entry.heldout_episodes and gate.get("n"):
            entry.heldout_episodes, entry.heldout_reward = gate["n"], gate.get("reward")
            entry.heldout_success_rate = gate.get("success_rate")
    return sorted(rows.values(), key=lambda r: (r.rating is None, -(r.rating or 0.0),
                                                -(r.mean_reward or 0.0), r.model))


def registry_evaluations() -> dict[str, dict]:
    """``registry:VERSION`` -> the held-out scores its training run measured (the evaluation gate)."""
    from simulators.llm.registry import ModelRegistry, RegistryError

    try:
        versions = ModelRegistry().list_versions()
    except (RegistryError, OSError):
        return {}
    return {f"registry:{v.id}": v.meta.get("metrics", {}).get("evaluation", {}).get("new", {}) for v in versions}


COLUMNS = ["rank", "model", "rating", "95% CI", "votes", "W-T-L", "sessions", "mean reward", "success",
           "held-out reward", "held-out success", "held-out n"]


def table_rows(rows: Sequence[LeaderboardRow]) -> list[list]:
    """The table as display cells (rank counts rated models only), for the CLI and the tab."""
    cells = []
    for rank, r in enumerate(rows, 1):
        cells.append([
            rank if r.rating is not None else "",
            r.model,
            _number(r.rating, 0),
            f"{r.lower:.0f} – {r.upper:.0f}" if r.lower is not None else "",
            r.battles,
            f"{r.wins}-{r.ties}-{r.losses}" if r.battles else "",
            r.sessions,
            _number(r.mean_reward, 3),
            _percent(r.success_rate),
            _number(r.heldout_reward, 3),
            _percent(r.heldout_success_rate),
            r.heldout_episodes or "",
        ])
    return cells


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def format_table(rows: Sequence[LeaderboardRow]) -> str:
    """A plain-text table with aligned columns."""
    cells = [COLUMNS] + [[str(c) for c in line] for line in table_rows(rows)]
    widths = [max(len(line[k]) for line in cells) for k in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def ratings_figure(rows: Sequence[LeaderboardRow]):
    """Ratings with their 95% intervals as a horizontal error-bar chart (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    rated = [r for r in rows if r.rating is not None][::-1]  # best at the top
    figure = Figure(figsize=(7, 0.6 * len(rated) + 1.4), layout="constrained")
    axes = figure.subplots()
    if not rated:
        axes.text(0.5, 0.5, "No votes yet: play a blind battle in the Compare tab.", ha="center", va="center")
        axes.set_axis_off()
        return figure
    ratings = np.array([r.rating for r in rated])
    lower = np.array([r.lower if r.lower is not None else r.rating for r in rated])
    upper = np.array([r.upper if r.upper is not None else r.rating for r in rated])
    axes.errorbar(ratings, range(len(rated)), xerr=[ratings - lower, upper - ratings], fmt="o", capsize=4)
    axes.axvline(ELO_ANCHOR, color="grey", linewidth=0.8, linestyle=":")
    axes.set_yticks(range(len(rated)), [_short(r.model) for r in rated])
    axes.set_xlabel("Bradley–Terry rating (Elo scale) with 95% bootstrap interval")
    return figure


def _short(model: str, limit: int = 40) -> str:
    return model if len(model) <= limit else "…" + model[-(limit - 1):]
