"""Export the session database for training and sharing.

* ``sweet`` — sweet_rl trajectory JSONL, one line per session (``simulators.trajectories.load_episodes`` reads it);
* ``trl``   — TRL preference JSONL (``prompt``, ``chosen``, ``rejected``) from edits, regenerations and votes,
  the prompt as the exact text the model saw (its chat template applied);
* ``trl-conversational`` — the same pairs in TRL's conversational format: the prompt as a list of
  messages, ``chosen``/``rejected`` as one assistant message each (TRL applies the chat template);
* ``hf``    — a Hugging Face ``datasets`` directory (``load_from_disk``) with a ``trajectories`` and a
  ``preferences`` split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from simulators.domain import Episode
from simulators.jsonl import write_jsonl
from simulators.store import SESSION_MODES, SessionStore
from simulators.store.preferences import preference_pairs
from simulators.trajectories import write_episodes

FORMATS = ("sweet", "trl", "trl-conversational", "hf")
TRAJECTORY_FEATURES = {"session_id": "string", "task_kind": "string", "mode": "string", "model_version": "string",
                       "reward": "float64", "trajectory": "string"}
PREFERENCE_FEATURES = {"prompt": "string", "chosen": "string", "rejected": "string", "source": "string",
                       "session_id": "string", "turn_idx": "int64"}
NO_PAIRS = ("No preference pairs yet: they come from edits of the agent's messages, regenerated replies you "
            "then liked, and the Compare tab's round votes.")
# What an export says as it goes: a line of what it does now, and how far it is (done, total; 0, 0 if unknown).
Progress = Callable[[str, int, int], None]


class ExportError(Exception):
    """An export that cannot be written; the message says why in words a person can act on."""


def no_progress(text: str, done: int = 0, total: int = 0) -> None:
    pass


def read_episodes(store: SessionStore, progress: Progress, **filters) -> list[Episode]:
    """The sessions matching ``filters``, one by one (the slow part of a large export), saying how far it is."""
    rows = store.list_sessions(**filters)
    episodes = []
    for done, row in enumerate(rows):
        progress(f"Reading session {done + 1} of {len(rows)}", done, len(rows))
        try:
            episodes.append(store.episode(row.id))
        except (ValueError, KeyError, TypeError) as exc:  # a row this version cannot read (bad JSON, missing field)
            raise ExportError(f"session {row.id} could not be read from the database ({type(exc).__name__}: "
                              f"{exc}); leave it out with the filters, or delete it") from exc
    return episodes


def read_pairs(store: SessionStore, progress: Progress) -> list:
    progress("Collecting preference pairs (edits, liked regenerations, round votes)", 0, 0)
    return preference_pairs(store)


def typed_dataset(rows: list[dict], columns: dict[str, str]):
    """A ``datasets.Dataset`` with these column types, also when ``rows`` is empty."""
    from datasets import Dataset, Features, Value

    features = Features({name: Value(dtype) for name, dtype in columns.items()})
    return Dataset.from_dict({name: [row[name] for row in rows] for name in columns}, features=features)


def export(store: SessionStore, fmt: str, out: str | Path, *, progress: Progress = no_progress, **filters) -> int:
    """Write the export; returns how many rows (sessions or pairs) it holds. ``progress`` hears
    each step as it starts (the Data tab shows it); a session that cannot be read is an ``ExportError``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "sweet":
        episodes = read_episodes(store, progress, **filters)
        progress(f"Writing {len(episodes)} session(s)", len(episodes), len(episodes))
        write_episodes(episodes, out)
        return len(episodes)
    if fmt in ("trl", "trl-conversational"):
        pairs = read_pairs(store, progress)
        progress(f"Writing {len(pairs)} preference pair(s)", 0, 0)
        write_jsonl(out, (pair.to_trl() if fmt == "trl" else pair.to_trl_conversational() for pair in pairs))
        return len(pairs)
    if fmt == "hf":
        progress("Loading the datasets library", 0, 0)  # its first import alone takes seconds
        try:
            from datasets import DatasetDict
        except ImportError as exc:
            raise ExportError("the Hugging Face dataset export needs the `datasets` package "
                              "(pip install datasets); the other formats work without it") from exc

        episodes = read_episodes(store, progress, **filters)
        # Nested task/turn objects become JSON strings: their keys vary by task kind.
        trajectories = [{"session_id": e.meta["session_id"], "task_kind": e.task.kind, "mode": e.meta["mode"],
                         "model_version": e.agent_model or "", "reward": e.reward,
                         "trajectory": json.dumps(e.to_sweet(), ensure_ascii=False)} for e in episodes]
        pairs = [p.to_dict() for p in read_pairs(store, progress)]
        progress(f"Writing the dataset: {len(trajectories)} session(s), {len(pairs)} preference pair(s)", 0, 0)
        splits = DatasetDict({"trajectories": typed_dataset(trajectories, TRAJECTORY_FEATURES),
                              "preferences": typed_dataset(pairs, PREFERENCE_FEATURES)})
        # One shard per split: ``datasets`` writes an empty split with none, and load_from_disk then
        # fails on it (IndexError); typed columns keep an empty split's schema.
        splits.save_to_disk(str(out), num_shards=dict.fromkeys(splits, 1))
        return len(trajectories)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m collab_app export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="", help="session database (default: $COLLAB_HOME/collab.sqlite)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="what to write (see above)")
    parser.add_argument("--out", required=True, help="output file (sweet, trl) or directory (hf)")
    parser.add_argument("--kind", choices=("backend", "frontend"), help="only sessions of this task kind")
    parser.add_argument("--mode", choices=SESSION_MODES, help="only this mode")
    args = parser.parse_args(argv)
    if args.db and not Path(args.db).is_file():
        parser.error(f"{args.db}: no such database")
    store = SessionStore(args.db or None)
    try:
        count = export(store, args.format, args.out, kind=args.kind, mode=args.mode)
    except ExportError as exc:
        parser.exit(1, f"export: {exc}\n")
    print(json.dumps({"format": args.format, "out": args.out, "rows": count}))
    return 0
