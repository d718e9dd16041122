"""Side-by-side comparison of two models on one task, with a vote after every round (Compare tab).

Chat arenas collect one vote per conversation; SWEET-RL assigns credit per turn, so here every
round's vote is a preference pair on one exact prompt. That only holds if both models answer the
*same* history, hence the rules:

* the two models sit at positions ``a`` and ``b`` in random order (``a`` is shown on the left);
  their names stay hidden until the final vote. Two specs that serve the same model (``default``
  and ``current`` before any promotion) are allowed: its replies are then sampled, each side with
  its own seed, so they differ (the leaderboard leaves such votes out: a model cannot be rated
  against itself);
* there is ONE shared history. Each round both models reply to it (each side's exact formatted
  prompt is recorded), and the person votes ``a`` / ``b`` / ``tie`` / ``both_bad`` before writing
  again. The preferred reply (``a`` on a tie or both-bad) is carried forward into the history;
* the comparison ends after the round whose carried reply is an answer (``I WANT TO ANSWER:``),
  after 10 rounds, or when the person ends it after a vote. A final overall vote follows, then the
  names are revealed and each side's final answer (its latest answer, else its last reply) is scored.

Storage: one ``mode="compare"`` session per side. Each side's session holds the shared history,
with the side's own reply at each round's position until the vote; a reply that lost is replaced
by the carried one (whose ``model`` field names the model that wrote it), so every stored prompt
matches the dialogue before it. In the final round each side keeps its own reply, which is what
its session is scored on. Votes are feedback of kind ``vote`` on side ``a``'s session:

* round vote: ``{compare_id, round, final: false, winner, model_a, model_b, session_a, session_b,
  blind, specs, identity_leak, prompt, prompt_a, prompt_b, a, b}``; ``a``/``b`` are the two
  replies, ``prompt_a``/``prompt_b`` the sides' exact prompts, ``prompt`` the shared one (identical
  when both models share a chat template; otherwise the carried side's);
* final vote: ``{compare_id, round, final: true, winner, model_a, model_b, session_a, session_b,
  blind, specs, identity_leak}``.

``blind``: the arena drew the pair (``collab_app.arena``), the person never named the models;
``specs``: the two specs compared, sorted; ``identity_leak``: the positions whose reply named its
own model (in that round; for the final vote, in any round).

``winner`` always names a stored position (``a`` = ``model_a``), never a screen side.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from collab_app.arena import names_itself
from collab_app.page_renders import render_and_store
from collab_app.session import RESAMPLE_TEMPERATURE, SessionError, fresh_seed
from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Episode, Task, Turn
from simulators.llm.base import ChatModel, GenerationConfig, ModelError
from simulators.prompts import agent_messages
from simulators.rollout import final_answer
from simulators.store import SessionStore, Vote

POSITIONS = ("a", "b")
VERDICTS = ("a", "b", "tie", "both_bad")
Stage = Literal["replies", "vote", "message", "final_vote", "done"]


def carried_position(winner: str) -> str:
    """Whose reply continues the shared history: the winner's, or ``a``'s when neither won."""
    return "b" if winner == "b" else "a"


@dataclass
class Reply:
    """One side's reply in one round: the stored turn and its rendered page (frontend)."""

    turn: Turn
    render_hash: str | None = None
    render_error: str | None = None


@dataclass
class ReplyView:
    """What the UI shows of one side while a round streams."""

    text: str = ""
    done: bool = False
    render_hash: str | None = None
    render_error: str | None = None


@dataclass
class RoundView:
    a: ReplyView
    b: ReplyView
    complete: bool = False  # both replies are in and stored: the vote is open


@dataclass
class Side:
    position: str
    model: ChatModel
    session_id: str
    replies: list[Reply] = field(default_factory=list)  # its own reply of every round
    answer: str | None = None
    reward: float | None = None
    scores: dict = field(default_factory=dict)
    score_error: str | None = None

    @property
    def name(self) -> str:
        return self.model.name


@dataclass
class Comparison:
    task: Task
    store: SessionStore
    first: ChatModel
    second: ChatModel
    human_name: str = "person:anonymous"
    max_new_tokens: int = 512
    temperature: float = 0.0
    renderer: object | None = None  # simulators.render.Renderer, for frontend tasks
    rng: random.Random = field(default_factory=random.Random)
    blind: bool = False  # the arena drew the pair: the person never saw the specs
    specs: tuple[str, ...] = ()  # the specs the two models were loaded from
    compare_id: str = field(init=False)
    sides: dict[str, Side] = field(init=False)
    history: list[Turn] = field(init=False)  # the shared dialogue
    history_renders: dict[int, str] = field(default_factory=dict, init=False)  # turn index -> screenshot
    pending: dict[str, Reply] | None = field(default=None, init=False)  # this round's replies, before the vote
    round_votes: list[str] = field(default_factory=list, init=False)
    identity_leaks: set[str] = field(default_factory=set, init=False)  # positions that named their model
    final_verdict: str | None = field(default=None, init=False)
    end_reason: str | None = field(default=None, init=False)
    cancel: threading.Event = field(default_factory=threading.Event, init=False)
    _streaming: threading.Lock = field(default_factory=threading.Lock, init=False)  # one round at a time

    def __post_init__(self) -> None:
        self.compare_id = uuid.uuid4().hex
        models = [self.first, self.second]
        self.rng.shuffle(models)  # the person must not learn which model sits where
        opening = Turn(role="human", content=self.task.problem_description)
        self.history = [opening]
        self.sides = {}
        for position, model in zip(POSITIONS, models):
            session_id = self.store.create_session(self.task, mode="compare", human=self.human_name,
                                                   model_version=model.name)
            self.store.add_turn(session_id, opening)
            self.sides[position] = Side(position, model, session_id)

    # -- state --------------------------------------------------------------------------------
    @property
    def rounds(self) -> int:
        """Rounds whose replies are complete."""
        return len(self.sides["a"].replies)

    @property
    def stage(self) -> Stage:
        if self.final_verdict is not None:
            return "done"
        if self.end_reason is not None:
            return "final_vote"
        if self.pending is not None:
            return "vote"
        return "replies" if self.history[-1].role == "human" else "message"

    @property
    def same_model(self) -> bool:
        """Both sides are one model (two specs that serve the same version): its replies are
        sampled, each side with its own seed, or they would be the same text."""
        return self.first.name == self.second.name

    @property
    def revealed(self) -> bool:
        return self.stage == "done"

    def conversation(self, position: str) -> list[tuple[Turn, str | None]]:
        """The dialogue as one side sees it now, each turn with its screenshot: the shared history,
        ending with this side's own reply while the vote is open and once the comparison is over."""
        turns = [(turn, self.history_renders.get(i)) for i, turn in enumerate(self.history)]
        own = self.pending[position] if self.pending else None
        if own is None and self.end_reason is not None and self.rounds:
            turns.pop()  # the carried final reply: show this side's own instead
            own = self.sides[position].replies[-1]
        if own is not None:
            turns.append((own.turn, own.render_hash))
        return turns

    # -- the round ------------------------------------------------------------------------------
    def replies(self) -> Iterator[RoundView]:
        """Stream both sides' replies to the shared history at once; the last view is complete and
        both replies are stored."""
        if self.stage != "replies":
            raise SessionError(self._not_now())
        if not self._streaming.acquire(blocking=False):
            raise SessionError("both models are already replying")
        try:
            yield from self._play_round()
        finally:
            self._streaming.release()

    def _play_round(self) -> Iterator[RoundView]:
        self.cancel.clear()
        episode = Episode(task=self.task, turns=list(self.history))
        messages = agent_messages(episode)
        views = {p: ReplyView() for p in POSITIONS}
        latency: dict[str, float] = {}
        for position, delta in self._merged_streams(messages, self._configs(), latency):
            if delta is None:
                views[position].done = True
            else:
                views[position].text += delta
            yield RoundView(**{p: ReplyView(v.text, v.done) for p, v in views.items()})
        replies = {}
        for position, side in self.sides.items():
            text = views[position].text
            turn = Turn(role="agent", content=text, input=side.model.format_prompt(messages), output=text,
                        model=side.name, latency_s=latency[position])
            replies[position] = Reply(turn)
        self._render(replies)
        for position, reply in replies.items():
            side = self.sides[position]
            self.store.add_turn(side.session_id, reply.turn, render_hash=reply.render_hash)
            side.replies.append(reply)
            views[position] = ReplyView(reply.turn.content, True, reply.render_hash, reply.render_error)
        self.pending = replies
        yield RoundView(**views, complete=True)

    def _configs(self) -> dict[str, GenerationConfig]:
        if not self.same_model:
            config = GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature)
            return dict.fromkeys(POSITIONS, config)
        return {p: GenerationConfig(max_new_tokens=self.max_new_tokens,
                                    temperature=self.temperature or RESAMPLE_TEMPERATURE, seed=fresh_seed())
                for p in POSITIONS}

    def _merged_streams(self, messages, configs: dict[str, GenerationConfig],
                        latency: dict[str, float]) -> Iterator[tuple[str, str | None]]:
        """(position, delta) as either model produces text; (position, None) when a side is done.
        Each model streams in its own thread, so both generate at the same time."""
        events: queue.Queue = queue.Queue()
        start = time.perf_counter()

        def pump(position: str, model: ChatModel) -> None:
            try:
                for delta in model.stream_chat(messages, configs[position], self.cancel):
                    events.put((position, delta, None))
                latency[position] = round(time.perf_counter() - start, 3)
                events.put((position, None, None))
            except Exception as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                events.put((position, None, exc))

        workers = [threading.Thread(target=pump, args=(p, s.model), daemon=True, name=f"compare-{p}")
                   for p, s in self.sides.items()]
        for worker in workers:
            worker.start()
        running = len(workers)
        try:
            while running:
                position, delta, error = events.get()
                if error is not None:
                    raise error if isinstance(error, ModelError) else \
                        ModelError(f"model {position.upper()} failed: {error}")
                if delta is None:
                    running -= 1
                yield position, delta
            if self.cancel.is_set():
                raise SessionError("the replies were stopped; press Retry for new ones")
        finally:
            self.cancel.set()  # a failed or abandoned round stops the other side too
            for worker in workers:
                worker.join()

    def stop(self) -> None:
        self.cancel.set()

    def _render(self, replies: dict[str, Reply]) -> None:
        if self.task.kind != "frontend" or self.renderer is None:
            return
        pages = render_and_store([reply.turn.content for reply in replies.values()], self.renderer, self.store)
        for reply, page in zip(replies.values(), pages):
            reply.render_hash, reply.render_error = page.render_hash, page.render_error

    # -- the person's actions -------------------------------------------------------------------
    def vote(self, winner: str) -> None:
        """The round's vote; the preferred reply continues the shared history."""
        if self.stage != "vote":
            raise SessionError(self._not_now())
        _check_verdict(winner)
        replies, self.pending = self.pending, None
        prompts = {p: r.turn.input for p, r in replies.items()}
        carried = carried_position(winner)
        index = len(self.history)  # the replies' turn index, the same in both sessions
        leaks = [p for p in POSITIONS if names_itself(replies[p].turn.content, self.sides[p].name)]
        self.identity_leaks.update(leaks)
        self._record_vote(winner, final=False, turn_idx=index, extra={
            "identity_leak": tuple(leaks),
            "prompt": prompts["a"] if prompts["a"] == prompts["b"] else prompts[carried],
            "prompt_a": prompts["a"], "prompt_b": prompts["b"],
            "a": replies["a"].turn.content, "b": replies["b"].turn.content})
        self.round_votes.append(winner)
        chosen = replies[carried]
        self.history.append(chosen.turn)
        if chosen.render_hash:
            self.history_renders[index] = chosen.render_hash
        if ANSWER_MARKER in chosen.turn.content:
            self._end_rounds(f"model {carried.upper()}'s answer was carried forward")
        elif self.rounds >= MAX_ROUNDS:
            self._end_rounds(f"{MAX_ROUNDS} rounds were played")
        else:  # a losing side's session goes on from the carried reply, as the dialogue does
            for position, side in self.sides.items():
                if position != carried:
                    self.store.replace_turn(side.session_id, index, chosen.turn, render_hash=chosen.render_hash)

    def human_says(self, text: str) -> None:
        if self.stage != "message":
            raise SessionError(self._not_now())
        turn = Turn(role="human", content=text)
        self.history.append(turn)
        for side in self.sides.values():
            self.store.add_turn(side.session_id, turn)

    def end(self) -> None:
        """The person has seen enough: no more rounds, go to the final vote."""
        if self.stage != "message":
            raise SessionError(self._not_now())
        self._end_rounds("you ended it")

    def vote_final(self, winner: str) -> None:
        """The overall vote; then the names are revealed and both final answers scored."""
        if self.stage != "final_vote":
            raise SessionError(self._not_now())
        _check_verdict(winner)
        self._record_vote(winner, final=True, turn_idx=None, extra={"identity_leak": tuple(sorted(self.identity_leaks))})
        self.final_verdict = winner
        self._score()

    def abandon(self) -> None:
        """The person left before the final vote; the turns and votes so far stay stored."""
        self.stop()
        if self.stage == "done":
            return
        for side in self.sides.values():
            self.store.finish_session(side.session_id, answer=None, reward=None, scores={}, status="abandoned")

    # -- internals ----------------------------------------------------------------------------
    def _record_vote(self, winner: str, *, final: bool, turn_idx: int | None, extra: dict) -> None:
        a, b = self.sides["a"], self.sides["b"]
        vote = Vote(compare_id=self.compare_id, round=self.rounds, final=final, winner=winner, model_a=a.name,
                    model_b=b.name, session_a=a.session_id, session_b=b.session_id, blind=self.blind,
                    specs=tuple(sorted(self.specs)), **extra)
        self.store.add_vote(a.session_id, vote, turn_idx=turn_idx)

    def _end_rounds(self, reason: str) -> None:
        """Each session ends with its side's own last reply (put back where the person ends the
        comparison after that reply lost a vote): that is what the side is scored on."""
        self.end_reason = reason
        index = len(self.history) - 1
        for side in self.sides.values():
            last = side.replies[-1]
            self.store.replace_turn(side.session_id, index, last.turn, render_hash=last.render_hash)

    def _score(self) -> None:
        episodes = {}
        for position, side in self.sides.items():
            side.answer = side_answer(self.task, [r.turn for r in side.replies])
            turns = [turn for turn, _ in self.conversation(position)]
            episodes[position] = Episode(task=self.task, turns=turns, answer=side.answer, human=self.human_name,
                                         agent_model=side.name)
        if not self.task.free_form:
            from simulators.scoring import score_episodes

            try:
                score_episodes(list(episodes.values()))
            except Exception as exc:  # noqa: BLE001 - a broken scorer must not lose the votes
                for side in self.sides.values():
                    side.score_error = str(exc) or type(exc).__name__
        for position, side in self.sides.items():
            episode = episodes[position]
            side.reward, side.scores = episode.reward, dict(episode.scores)
            scored = side.score_error is None and not self.task.free_form
            self.store.finish_session(side.session_id, answer=side.answer, reward=side.reward, scores=side.scores,
                                      status="scored" if scored else "answered")

    def _not_now(self) -> str:
        return {
            "replies": "wait for both models' replies",
            "vote": "vote on this round's replies first",
            "message": "write your next message (or end the comparison)",
            "final_vote": "the rounds are over: give your overall vote",
            "done": "this comparison has ended",
        }[self.stage]


def side_answer(task: Task, replies: list[Turn]) -> str:
    """A side's final answer: taken from its latest reply that answers, or its last reply when it
    never answered (backend: the code after the marker; frontend: its latest HTML page so far)."""
    answered = [i for i, turn in enumerate(replies) if ANSWER_MARKER in turn.content]
    upto = answered[-1] + 1 if answered else len(replies)
    return final_answer(Episode(task=task, turns=replies[:upto]))


def _check_verdict(winner: str) -> None:
    if winner not in VERDICTS:
        raise SessionError(f"a vote is one of {', '.join(VERDICTS)}, not {winner!r}")
