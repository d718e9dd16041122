"""The session database: every collaboration the app hosts, turn by turn, in SQLite.

WAL mode lets training read while the app writes; each write is its own transaction, so a
killed app loses nothing that was shown. The schema is versioned with ``PRAGMA user_version``:
``MIGRATIONS[i]`` (a tuple of statements) upgrades version ``i`` to ``i + 1``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from simulators.domain import Episode, Task, Turn
from simulators.paths import collab_home
from simulators.tasks import task_from_row

# What played a session: a person (human), the simulator, a person on a free-form task, a Compare
# round's pair, or the Chat tab (no task, no score; its feedback still makes pairs).
SESSION_MODES = ("human", "simulator", "free", "compare", "chat")

MIGRATIONS: list[tuple[str, ...]] = [
    (  # version 1
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            task_kind TEXT NOT NULL,
            task_json TEXT NOT NULL,
            mode TEXT NOT NULL,                     -- human | simulator | free | compare
            human TEXT NOT NULL,                    -- person:<name> or simulator:<model>
            model_version TEXT NOT NULL,            -- the actor version the session started with
            status TEXT NOT NULL DEFAULT 'active',  -- active | scored | abandoned
            answer TEXT,
            reward REAL,
            scores_json TEXT NOT NULL DEFAULT '{}',
            rating INTEGER,
            comment TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
        """CREATE TABLE turns (
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            role TEXT NOT NULL,                     -- agent | human
            content TEXT NOT NULL,
            input TEXT,                             -- the agent's exact formatted prompt
            output TEXT,                            -- the agent's raw generation
            model_version TEXT,
            latency_s REAL,
            render_hash TEXT,                       -- screenshot of this turn's HTML (frontend)
            created_at REAL NOT NULL,
            PRIMARY KEY (session_id, idx))""",
        """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            turn_idx INTEGER,
            kind TEXT NOT NULL,                     -- like | dislike | edit | regenerate | vote
            before TEXT,                            -- edit: the original, regenerate: the discarded reply
            after TEXT,                             -- edit: the edited text, regenerate: the new reply
            payload_json TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL)""",
        """CREATE TABLE renders (
            hash TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            width INTEGER,
            height INTEGER,
            created_at REAL NOT NULL)""",
        "CREATE INDEX sessions_by_time ON sessions(created_at)",
        "CREATE INDEX feedback_by_session ON feedback(session_id)",
    ),
]


@dataclass
class SessionRow:
    id: str
    task_id: str
    task_kind: str
    mode: str
    human: str
    model_version: str
    status: str
    reward: float | None
    rating: int | None
    created_at: float
    turns: int


@dataclass(frozen=True)
class Vote:
    """A Compare-tab vote: the payload of a ``vote`` feedback event, typed (``collab_app.comparison``
    writes it and says what each field holds; preference pairs, the leaderboard and the arena read
    it). ``session_id`` and ``turn_idx`` are the event's, not part of the payload."""

    winner: str = ""  # a | b | tie | both_bad: a stored position, never a screen side
    final: bool = False  # the overall vote after the rounds, else a round's vote
    model_a: str = ""
    model_b: str = ""
    blind: bool = False  # the arena drew the pair; the person never named the models
    specs: tuple[str, ...] = ()  # the two specs compared, sorted
    identity_leak: tuple[str, ...] = ()  # positions whose reply named its own model
    compare_id: str = ""
    round: int = 0
    session_a: str = ""
    session_b: str = ""
    prompt: str = ""  # round votes: the shared prompt, each side's, and the two replies
    prompt_a: str = ""
    prompt_b: str = ""
    a: str = ""
    b: str = ""
    session_id: str = ""
    turn_idx: int | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any], session_id: str = "", turn_idx: int | None = None) -> Vote:
        """Tolerant of older payloads: a missing field takes its default, an unknown one is dropped."""
        known = {f.name for f in fields(cls)} - {"session_id", "turn_idx"}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in payload.items() if k in known}
        return cls(**values, session_id=session_id, turn_idx=turn_idx)

    def payload(self) -> dict[str, Any]:
        row = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        del row["session_id"], row["turn_idx"]
        return row


class SessionStore:
    """Thread-safe access to one SQLite file (one connection per thread)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else collab_home() / "collab.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.renders_dir = self.path.parent / "renders"
        self._local = threading.local()
        self._connection().execute("PRAGMA journal_mode=WAL")
        with self._transaction() as db:  # the version is read under the write lock: two processes
            version = db.execute("PRAGMA user_version").fetchone()[0]  # never migrate twice
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this code "
                                   f"({len(MIGRATIONS)}): upgrade collab-rl")
            for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    # -- connection handling ------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across an app crash
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        if db.in_transaction:  # nested use joins the outer transaction
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return self._connection().execute("PRAGMA user_version").fetchone()[0]

    # -- writes -------------------------------------------------------------------------------
    def create_session(self, task: Task, *, mode: str, human: str, model_version: str) -> str:
        session_id = uuid.uuid4().hex
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, task_id, task_kind, task_json, mode, human, model_version,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, task.id, task.kind, json.dumps(task.to_colbench()), mode, human,
                 model_version, now, now))
        return session_id

    def add_turn(self, session_id: str, turn: Turn, *, render_hash: str | None = None) -> int:
        """Append a turn and commit it; returns its index in the session."""
        now = time.time()
        with self._transaction() as db:
            idx = db.execute("SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id,)).fetchone()[0]
            db.execute(
                "INSERT INTO turns (session_id, idx, role, content, input, output, model_version, latency_s,"
                " render_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, idx, turn.role, turn.content, turn.input, turn.output, turn.model,
                 turn.latency_s, render_hash, now))
            db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id))
        return idx

    def replace_turn(self, session_id: str, idx: int, turn: Turn, *, render_hash: str | None = None) -> None:
        """Overwrite a turn (after an edit or a regeneration; the feedback event keeps the old text)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE turns SET role = ?, content = ?, input = ?, output = ?, model_version = ?, latency_s = ?,"
                " render_hash = ? WHERE session_id = ? AND idx = ?",
                (turn.role, turn.content, turn.input, turn.output, turn.model, turn.latency_s,
                 render_hash, session_id, idx))

    def truncate_turns(self, session_id: str, keep: int) -> None:
        """Drop turns from index ``keep`` on (undo, edit-and-resend)."""
        with self._transaction() as db:
            db.execute("DELETE FROM turns WHERE session_id = ? AND idx >= ?", (session_id, keep))
            db.execute("UPDATE sessions SET status = 'active', answer = NULL, reward = NULL, scores_json = '{}'"
                       " WHERE id = ?", (session_id,))

    def add_feedback(self, session_id: str, kind: str, *, turn_idx: int | None = None, before: str | None = None,
                     after: str | None = None, payload: dict[str, Any] | None = None) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO feedback (session_id, turn_idx, kind, before, after, payload_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, turn_idx, kind, before, after, json.dumps(payload or {}), time.time()))
            return cursor.lastrowid

    def add_vote(self, session_id: str, vote: Vote, *, turn_idx: int | None = None) -> int:
        return self.add_feedback(session_id, "vote", turn_idx=turn_idx, payload=vote.payload())

    def finish_session(self, session_id: str, *, answer: str | None, reward: float | None,
                       scores: dict[str, Any], status: str = "scored") -> None:
        with self._transaction() as db:
            db.execute("UPDATE sessions SET status = ?, answer = ?, reward = ?, scores_json = ?, updated_at = ?"
                       " WHERE id = ?", (status, answer, reward, json.dumps(scores, default=str),
                                         time.time(), session_id))

    def add_episode(self, episode: Episode, *, mode: str) -> str:
        """Store a finished episode as one session (rollouts or scripted dialogues, e.g. for training)."""
        session_id = self.create_session(episode.task, mode=mode, human=episode.human,
                                         model_version=episode.agent_model)
        for turn in episode.turns:
            self.add_turn(session_id, turn)
        self.finish_session(session_id, answer=episode.answer, reward=episode.reward, scores=episode.scores,
                            status="scored" if episode.reward is not None else "abandoned")
        return session_id

    def rate_session(self, session_id: str, rating: int, comment: str = "") -> None:
        if not 1 <= int(rating) <= 5:
            raise ValueError("rating must be between 1 and 5")
        with self._transaction() as db:
            db.execute("UPDATE sessions SET rating = ?, comment = ?, updated_at = ? WHERE id = ?",
                       (int(rating), comment, time.time(), session_id))

    def save_render(self, png: bytes, width: int | None = None, height: int | None = None) -> str:
        """Store a screenshot as a file named by its content hash; returns the hash."""
        digest = hashlib.sha256(png).hexdigest()
        path = self.renders_dir / f"{digest[:2]}" / f"{digest}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(png)
            tmp.replace(path)
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO renders (hash, path, width, height, created_at) VALUES (?, ?, ?, ?, ?)",
                       (digest, str(path), width, height, time.time()))
        return digest

    # -- reads --------------------------------------------------------------------------------
    def render_path(self, digest: str) -> Path | None:
        row = self._connection().execute("SELECT path FROM renders WHERE hash = ?", (digest,)).fetchone()
        return Path(row["path"]) if row else None

    def list_sessions(self, *, kind: str | None = None, mode: str | None = None, model_version: str | None = None,
                      min_reward: float | None = None, since: float | None = None, status: str | None = None,
                      limit: int | None = None) -> list[SessionRow]:
        """Sessions matching every filter given, newest first; all of them unless ``limit`` (exports
        and training read every session, only a table on screen needs a cap)."""
        clauses, params = [], []
        for column, value in (("task_kind", kind), ("mode", mode), ("model_version", model_version),
                              ("status", status)):
            if value:
                clauses.append(f"s.{column} = ?")
                params.append(value)
        if min_reward is not None:
            clauses.append("s.reward >= ?")
            params.append(min_reward)
        if since is not None:
            clauses.append("s.created_at >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._connection().execute(
            "SELECT s.*, (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id) AS n_turns FROM sessions s "
            f"{where} ORDER BY s.created_at DESC LIMIT ?", (*params, -1 if limit is None else limit)).fetchall()
        return [SessionRow(id=r["id"], task_id=r["task_id"], task_kind=r["task_kind"], mode=r["mode"],
                           human=r["human"], model_version=r["model_version"], status=r["status"],
                           reward=r["reward"], rating=r["rating"], created_at=r["created_at"],
                           turns=r["n_turns"]) for r in rows]

    def turns(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT * FROM turns WHERE session_id = ? ORDER BY idx", (session_id,)).fetchall()
        return [dict(r) for r in rows]

    def feedback(self, session_id: str | None = None) -> list[dict[str, Any]]:
        query, params = "SELECT * FROM feedback", ()
        if session_id:
            query, params = query + " WHERE session_id = ?", (session_id,)
        rows = self._connection().execute(query + " ORDER BY id", params).fetchall()
        return [{**dict(r), "payload": json.loads(r["payload_json"])} for r in rows]

    def votes(self) -> list[Vote]:
        """Every Compare-tab vote, oldest first."""
        return [Vote.from_payload(e["payload"], e["session_id"], e["turn_idx"])
                for e in self.feedback() if e["kind"] == "vote"]

    def episode(self, session_id: str) -> Episode:
        """A stored session as the shared domain model (what training and exports consume)."""
        row = self._connection().execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise KeyError(f"no session {session_id!r}")
        task = task_from_row(json.loads(row["task_json"]), source=f"session:{session_id}")
        turns = [Turn(role=t["role"], content=t["content"], input=t["input"], output=t["output"],
                      model=t["model_version"], latency_s=t["latency_s"]) for t in self.turns(session_id)]
        scores = json.loads(row["scores_json"] or "{}")
        if row["rating"] is not None:
            scores["rating"] = row["rating"]
        return Episode(task=task, turns=turns, answer=row["answer"], reward=row["reward"], scores=scores,
                       human=row["human"], agent_model=row["model_version"],
                       meta={"session_id": session_id, "mode": row["mode"], "status": row["status"],
                             "created_at": row["created_at"]})

    def episodes(self, **filters: Any) -> list[Episode]:
        return [self.episode(s.id) for s in self.list_sessions(**filters)]
