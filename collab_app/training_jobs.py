"""Training runs started from the app, each in its own process.

The app never trains in its own process: a run is ``python -m training loop`` in a new process
group, so the app stays responsive, a crash or kill of the run cannot touch the serving model, and
Cancel kills the whole group. The run's data is a snapshot of the chosen sessions (sweet_rl JSONL)
written into its directory first, so what it trained on is kept with it. Progress is read from the
files the run writes (its stage directories, their ``log.jsonl``, ``version.json`` at the end), so a
run started before an app restart is still visible after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulators.jsonl import write_jsonl
from simulators.paths import collab_home
from simulators.store import SessionStore
from simulators.trajectories import write_episodes
from training import ALGORITHMS
from training.data import best_trajectories, store_preference_rows, trajectory_pairs

EVALUATION_STAGES = ("eval_parent.jsonl", "eval_new.jsonl", "version.json")
STAGES = {"sweet": ("critic", "actor", *EVALUATION_STAGES), "mtdpo": ("actor", *EVALUATION_STAGES),
          "rft": ("actor", *EVALUATION_STAGES)}  # what each algorithm's run writes, in order
# The file that says a stage finished (its folder exists from the stage's start, also when it fails).
STAGE_DONE = {"critic": "critic/critic.json", "actor": "actor/summary.json"}


@dataclass
class TrainRequest:
    """What a person chose in the Train tab."""

    algorithm: str = "sweet"
    kind: str = ""  # backend | frontend | "" (both)
    mode: str = ""  # one of simulators.store.SESSION_MODES, or "" (all)
    since_days: float = 0.0  # only sessions of the last N days (0 = all)
    min_sessions: int = 4
    best_of_n: int = 4
    critic_epochs: int = 2
    eval_limit: int = 8  # the gate promotes on 6 tasks at least (training.stats.MIN_TASKS)
    eval_samples: int = 2  # episodes per task and model: paired, sample k has the same seed on both sides
    eval_max_rounds: int = 3
    max_new_tokens: int = 128
    promote_margin: float | None = None  # promote automatically when the gain's 95% CI lies above this
    actor_human_pairs: bool = True  # people's turn-level preferences train the actor (DPO pairs)
    critic_human_pairs: bool = False  # ... and supervise the critic
    extra_args: list[str] = field(default_factory=list)


def runs_dir() -> Path:
    path = collab_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class TrainingJob:
    """One run: its directory, its process (when started here) and what its files say."""

    def __init__(self, out: Path, process: subprocess.Popen | None = None):
        self.out = out
        self.process = process

    # -- start --------------------------------------------------------------------------------
    @classmethod
    def start(cls, store: SessionStore, request: TrainRequest, *, eval_tasks: str = "", base: str = "default",
              simulator: str = "default") -> TrainingJob:
        """Snapshot the matching sessions and start ``python -m training loop`` on them.

        The run starts from the registry's current version (else ``base``) and is evaluated
        against it with ``simulator``, the app's simulated human.
        """
        if request.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {request.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        since = time.time() - request.since_days * 86400 if request.since_days else None
        episodes = [e for e in store.episodes(kind=request.kind or None, mode=request.mode or None, since=since)
                    if e.reward is not None]
        if len(episodes) < request.min_sessions:
            raise ValueError(f"only {len(episodes)} scored session(s) match; at least {request.min_sessions} "
                             "are needed (collaborate on more tasks or lower the minimum)")
        preference_rows = store_preference_rows(store)
        missing = missing_data(request, episodes, preference_rows)
        if missing:
            raise ValueError(missing)
        out = runs_dir() / time.strftime("run-%Y%m%d-%H%M%S")
        out.mkdir(parents=True, exist_ok=False)
        snapshot = out / "data.jsonl"
        write_episodes(episodes, snapshot)
        preferences = out / "preferences.jsonl"  # people's turn-level pairs, kept with the run too
        write_jsonl(preferences, preference_rows)
        (out / "request.json").write_text(json.dumps(request.__dict__, indent=2))
        command = [sys.executable, "-m", "training", "loop", "--data", str(snapshot), "--preferences", str(preferences),
                   "--out", str(out),
                   "--algorithm", request.algorithm, "--best-of-n", str(request.best_of_n),
                   "--critic-epochs", str(request.critic_epochs), "--eval-limit", str(request.eval_limit),
                   "--eval-samples", str(request.eval_samples),
                   "--eval-max-rounds", str(request.eval_max_rounds), "--max-new-tokens", str(request.max_new_tokens),
                   "--eval-max-new-tokens", str(request.max_new_tokens), "--base", base, "--simulator", simulator,
                   "--no-progress", *request.extra_args]
        if request.kind:
            command += ["--kind", request.kind]
        command.append("--human-pairs" if request.actor_human_pairs else "--no-human-pairs")
        if request.critic_human_pairs:
            command.append("--critic-human-pairs")
        if eval_tasks:
            command += ["--eval-tasks", eval_tasks]
        if request.promote_margin is not None:
            command += ["--promote-if-better", "--promote-margin", str(request.promote_margin)]
        return cls._launch(out, command)

    @classmethod
    def _launch(cls, out: Path, command: list[str]) -> TrainingJob:
        (out / "command.json").write_text(json.dumps(command))
        log = open(out / "process.log", "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                   cwd=Path(__file__).resolve().parents[1])
        log.close()
        (out / "pid").write_text(str(process.pid))  # the process group to signal, also after an app restart
        job = cls(out, process)
        threading.Thread(target=job._reap, daemon=True).start()
        return job

    def resume(self) -> TrainingJob:
        """Start the same command again in the same directory: finished stages are reused."""
        if self.running:
            raise ValueError("this run is still going")
        command = json.loads((self.out / "command.json").read_text())
        return self._launch(self.out, command)

    def _reap(self) -> None:
        code = self.process.wait()
        (self.out / "exit_code").write_text(str(code))

    # -- control ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self) -> None:
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)  # the whole group: data loaders, samplers
            self.process.wait()
            (self.out / "cancelled").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))

    # -- what the files say ---------------------------------------------------------------------
    @property
    def algorithm(self) -> str:
        return (_read_json(self.out / "request.json") or {}).get("algorithm", "sweet")

    def status(self) -> dict:
        version = _read_json(self.out / "version.json")
        exit_code = (self.out / "exit_code").read_text().strip() if (self.out / "exit_code").exists() else None
        state = ("running" if self.running else "finished" if version else "cancelled"
                 if (self.out / "cancelled").exists() else "failed" if exit_code not in (None, "0")
                 else "interrupted")
        stages = STAGES.get(self.algorithm, STAGES["sweet"])
        done = [s for s in stages if self.stage_done(s)]
        stage = next((s for s in stages if not self.stage_done(s)), "done")
        return {"run": self.out.name, "algorithm": self.algorithm, "state": state, "stage": stage,
                "stages_done": done, "last_log": self.last_log_rows(), "version": version, "exit_code": exit_code,
                "error": self.failure(exit_code) if state == "failed" else None}

    def stage_done(self, stage: str) -> bool:
        return (self.out / STAGE_DONE.get(stage, stage)).exists()

    def failure(self, exit_code: str | None) -> str:
        """Why the run failed: the last line of its output (an exception's type and message)."""
        lines = [line.strip() for line in self.process_log_tail().splitlines() if line.strip()]
        return lines[-1] if lines else f"the training process exited with code {exit_code}"

    def last_log_rows(self, count: int = 5) -> list[dict]:
        logs = sorted(self.out.glob("*/log.jsonl"), key=lambda p: p.stat().st_mtime)
        if not logs:
            return []
        lines = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()[-count:]
        rows = []
        for line in lines:
            try:
                rows.append({"stage": logs[-1].parent.name, **json.loads(line)})
            except json.JSONDecodeError:
                continue  # a line being written right now
        return rows

    def curves(self) -> list[Path]:
        return sorted(self.out.glob("*/curves.png"))

    def process_log_tail(self, chars: int = 4000) -> str:
        path = self.out / "process.log"
        return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""


def missing_data(request: TrainRequest, episodes: list, preference_rows: list[dict]) -> str | None:
    """What the chosen algorithm would find missing in these sessions, said before a run starts
    (the run would fail on it minutes later), or None when there is enough to train on."""
    tasks = len({e.task.id for e in episodes})
    have = f"the {len(episodes)} scored session(s) cover {tasks} task(s)"
    if request.algorithm == "rft":
        if best_trajectories(episodes):
            return None
        return (f"Rejection fine-tuning needs a successful session (reward 1) to imitate, and {have} with none. "
                "Collaborate until the agent's answer passes the tests.")
    if trajectory_pairs(episodes):
        return None
    if request.algorithm == "sweet" and request.critic_human_pairs and preference_rows:
        return None  # the critic learns from people's turn-level pairs instead
    name = "SWEET-RL" if request.algorithm == "sweet" else "Multi-turn DPO"
    hint = (" or tick “supervise the critic” to use people's edits, liked regenerations and votes"
            if request.algorithm == "sweet" and preference_rows else "")
    return (f"{name} learns from pairs of sessions on the same task with different rewards (one that succeeded, "
            f"one that did not), and {have} without such a pair. Play a task again until one session succeeds and "
            f"one fails, or use rejection fine-tuning (it needs one success){hint}.")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def recent_runs(limit: int = 20) -> list[TrainingJob]:
    return [TrainingJob(p) for p in sorted(runs_dir().glob("run-*"), reverse=True)[:limit]]


class TrainingManager:
    """The app's one training slot: at most one run at a time, plus the opt-in continuous mode
    (retrain after every N new scored sessions, with the last request's settings)."""

    def __init__(self, store: SessionStore, eval_tasks: str = "", base: str = "default", simulator: str = "default"):
        self.store = store
        self.eval_tasks = eval_tasks
        self.base, self.simulator = base, simulator
        self.job: TrainingJob | None = next(iter(recent_runs(1)), None)
        self.continuous_every = 0  # 0 = off
        self.last_request = TrainRequest()
        self._scored_at_last_start = self.scored_sessions()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def scored_sessions(self) -> int:
        return sum(1 for s in self.store.list_sessions() if s.reward is not None)

    def start(self, request: TrainRequest) -> TrainingJob:
        with self._lock:
            if self.job is not None and self.job.running:
                raise ValueError("a training run is already going; cancel it or wait for it")
            self.job = TrainingJob.start(self.store, request, eval_tasks=self.eval_tasks, base=self.base,
                                         simulator=self.simulator)
            self.last_request = request
            self._scored_at_last_start = self.scored_sessions()
            return self.job

    def cancel(self) -> None:
        with self._lock:
            if self.job is not None:
                self.job.cancel()

    def resume(self) -> TrainingJob:
        with self._lock:
            if self.job is None:
                raise ValueError("there is no run to resume")
            self.job = self.job.resume()
            return self.job

    def set_continuous(self, every: int) -> None:
        """Retrain after every ``every`` new scored sessions (0 turns it off)."""
        self.continuous_every = max(0, int(every))
        if self.continuous_every and (self._watcher is None or not self._watcher.is_alive()):
            self._watcher = threading.Thread(target=self._watch, daemon=True, name="continuous-training")
            self._watcher.start()

    def due(self) -> bool:
        return bool(self.continuous_every) and \
            self.scored_sessions() - self._scored_at_last_start >= self.continuous_every

    def _watch(self, interval_s: float = 10.0) -> None:
        while self.continuous_every:
            if self.due() and not (self.job is not None and self.job.running):
                try:
                    self.start(self.last_request)
                except ValueError:
                    pass  # not enough matching sessions yet: try again later
            time.sleep(interval_s)
