"""The experiment's working directory (``--out``): where each stage writes, and the markers of the
finished stages (``stages/<name>.json``) that let a re-run skip them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path


class Stages:
    """The finished stages of an experiment: ``stages/<name>.json`` = {stage, wall_s, summary}."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.order: list[str] = []  # stages in the order this run reached them
        directory.mkdir(parents=True, exist_ok=True)

    def marker(self, name: str) -> dict | None:
        path = self.directory / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, work: Callable[[], dict]) -> dict:
        """``work()``'s summary, from the marker when the stage is finished, else by running it."""
        self.order.append(name)
        if (done := self.marker(name)) is not None:
            return done["summary"]
        start = time.perf_counter()
        summary = work()
        record = {"stage": name, "wall_s": round(time.perf_counter() - start, 1), "summary": summary}
        tmp = self.directory / f".{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, self.directory / f"{name}.json")  # a marker is never half-written
        return summary

    def finished(self) -> list[dict]:
        """The markers of the stages reached so far, in stage order."""
        return [record for name in self.order if (record := self.marker(name)) is not None]

def eval_file(out: Path, method: str, scorer: str | None = None) -> Path:
    return out / "eval" / (f"{method}.jsonl" if scorer is None else f"{method}.{scorer}.jsonl")

def critic_dir(out: Path, method: str) -> Path:
    return out / "train" / method / "critic"


def actor_dir(out: Path, method: str) -> Path:
    return out / "train" / method / "actor"

