"""One live collaboration: the rules of a ColBench episode with a real person in the human's seat.

``LiveSession`` holds the episode, writes every turn to the session store the moment it exists,
renders the agent's pages (frontend), and scores the final answer at once. It knows nothing of
Gradio, so the UI modules stay thin and the rules are tested without a browser.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from collab_app.page_renders import render_and_store
from simulators.domain import ANSWER_MARKER, MAX_ROUNDS, Episode, Task, Turn
from simulators.humans import SimulatedHuman
from simulators.llm.base import ChatModel, GenerationConfig, ModelError
from simulators.prompts import agent_messages
from simulators.rollout import final_answer, new_episode
from simulators.store import SessionStore

# Regenerate samples: a greedy model would write the same reply again, and no preference pair could
# come of it. The rollouts' agent temperature, with a fresh seed each time.
RESAMPLE_TEMPERATURE = 0.7


def fresh_seed() -> int:
    return random.randrange(2**31)


class SessionError(RuntimeError):
    """An action that the session's state does not allow (the message says why)."""


@dataclass
class AgentTurnView:
    """What the UI shows while an agent turn streams and when it ends."""

    text: str
    done: bool = False
    render_hash: str | None = None  # frontend: the screenshot of this turn's HTML
    render_error: str | None = None
    finished: bool = False  # the episode ended with this turn (answer or round limit)
    stage: str = "writing"  # writing | rendering (its page) | scoring (the final answer): said while it lasts


@dataclass
class LiveSession:
    task: Task
    store: SessionStore
    agent: ChatModel
    human_name: str = "person:anonymous"
    mode: str = "human"  # human | simulator | free
    max_new_tokens: int = 512
    temperature: float = 0.0
    renderer: object | None = None  # simulators.render.Renderer, for frontend tasks
    episode: Episode = field(init=False)
    session_id: str = field(init=False)
    render_hashes: dict[int, str] = field(default_factory=dict, init=False)  # turn index -> screenshot
    cancel: threading.Event = field(default_factory=threading.Event, init=False)
    _replying: threading.Lock = field(default_factory=threading.Lock, init=False)  # one agent turn at a time

    def __post_init__(self) -> None:
        self.episode = new_episode(self.task, human=self.human_name, agent_model=self.agent.name)
        self.session_id = self.store.create_session(self.task, mode=self.mode, human=self.human_name,
                                                    model_version=self.agent.name)
        self.store.add_turn(self.session_id, self.episode.turns[0])

    # -- state --------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.episode.answer is not None

    @property
    def expecting(self) -> str:
        """Whose turn it is: 'agent', 'human' or 'nobody' (episode over)."""
        if self.finished:
            return "nobody"
        return "agent" if self.episode.turns[-1].role == "human" else "human"

    # -- the person's actions -------------------------------------------------------------------
    def human_says(self, text: str) -> None:
        if self.expecting != "human":
            raise SessionError("wait for the agent's reply" if self.expecting == "agent" else "this session has ended")
        turn = Turn(role="human", content=text)
        self.episode.turns.append(turn)
        self.store.add_turn(self.session_id, turn)

    @property
    def replying(self) -> bool:
        return self._replying.locked()

    def agent_replies(self, config: GenerationConfig | None = None) -> Iterator[AgentTurnView]:
        """Stream the agent's next turn; the last view has ``done=True`` and the turn is stored.
        ``config`` overrides the session's generation settings (Regenerate samples)."""
        if self.expecting != "agent":
            raise SessionError("it is your turn to write" if self.expecting == "human" else "this session has ended")
        if not self._replying.acquire(blocking=False):
            raise SessionError("the agent is already replying")
        try:
            yield from self._agent_turn(config or GenerationConfig(max_new_tokens=self.max_new_tokens,
                                                                   temperature=self.temperature))
        finally:
            self._replying.release()

    def resampling_config(self) -> GenerationConfig:
        """Settings for another reply to the same prompt: sampled, with a new seed."""
        return GenerationConfig(max_new_tokens=self.max_new_tokens,
                                temperature=self.temperature or RESAMPLE_TEMPERATURE, seed=fresh_seed())

    def _agent_turn(self, config: GenerationConfig) -> Iterator[AgentTurnView]:
        self.cancel.clear()
        messages = agent_messages(self.episode)
        start = time.perf_counter()
        text = ""
        for delta in self.agent.stream_chat(messages, config, self.cancel):
            text += delta
            yield AgentTurnView(text=text)
        if not text.strip():
            raise ModelError("the model returned an empty reply; try Regenerate")
        turn = Turn(role="agent", content=text, input=self.agent.format_prompt(messages), output=text,
                    model=self.agent.name, latency_s=round(time.perf_counter() - start, 3))
        view = AgentTurnView(text=text, done=True)
        if self.task.kind == "frontend" and self.renderer is not None:
            yield AgentTurnView(text=text, stage="rendering")
        self._render_into(view, text)
        self.episode.turns.append(turn)
        index = self.store.add_turn(self.session_id, turn, render_hash=view.render_hash)
        if view.render_hash:
            self.render_hashes[index] = view.render_hash
        if ANSWER_MARKER in text or self.episode.rounds >= MAX_ROUNDS:
            self.episode.answer = final_answer(self.episode)
            yield AgentTurnView(text=text, stage="scoring")
            self.score()
            view.finished = True
        yield view

    def stop(self) -> None:
        self.cancel.set()

    def end(self) -> None:
        """The person ends the session now: the agent's latest reply is its final answer, scored at
        once (a free-form session then takes the person's rating)."""
        if self.finished:
            raise SessionError("this session has ended")
        if self.replying:
            raise SessionError("wait for the agent's reply (or press Stop) before ending")
        if not self.episode.agent_turns:
            raise SessionError("the agent has not replied yet: there is nothing to score")
        self.episode.answer = final_answer(self.episode)
        self.score()

    def abandon(self) -> None:
        """The person moved on before the agent answered; the turns so far stay stored."""
        self.stop()
        self.store.finish_session(self.session_id, answer=None, reward=None, scores={}, status="abandoned")

    def latest_render_path(self):
        """The screenshot of the agent's most recent page, if any."""
        if not self.render_hashes:
            return None
        return self.store.render_path(self.render_hashes[max(self.render_hashes)])

    def undo(self) -> str:
        """Take back the last exchange: the person's last message and everything after it.
        Returns that message, so the person can change it and send it again."""
        if self.replying:
            raise SessionError("wait for the agent's reply (or press Stop) before undoing")
        human_turns = [i for i, t in enumerate(self.episode.turns) if t.role == "human" and i > 0]
        if not human_turns:
            raise SessionError("nothing to undo")
        text = self.episode.turns[human_turns[-1]].content
        self._truncate(human_turns[-1])
        return text

    def regenerate(self) -> Iterator[AgentTurnView]:
        """Discard the agent's last turn (kept as a feedback event) and stream a new one, sampled
        with a new seed (the same settings would write the same reply again)."""
        last = self.episode.turns[-1]
        if last.role != "agent":
            raise SessionError("there is no agent reply to regenerate")
        if self.replying:
            raise SessionError("the agent is already replying")
        index = len(self.episode.turns) - 1
        self._truncate(index)
        config = self.resampling_config()
        for view in self.agent_replies(config):
            if view.done:  # recorded before the last view is handed out: a consumer may stop there
                self.store.add_feedback(self.session_id, "regenerate", turn_idx=index, before=last.content,
                                        after=view.text,
                                        payload={"temperature": config.temperature, "seed": config.seed})
            yield view

    def edit(self, index: int, text: str) -> None:
        """Change a message in place; the edit is recorded (before and after) and later turns are
        dropped so the dialogue stays consistent. Editing the agent's message is preference data
        (the edited text chosen over the original); after an edit of the person's own message it
        is the agent's turn again (``agent_replies`` answers the edited message)."""
        if not 0 < index < len(self.episode.turns):
            raise SessionError("that message cannot be edited (the task's opening message is fixed)")
        if self.replying:
            raise SessionError("wait for the agent's reply (or press Stop) before editing")
        old = self.episode.turns[index]
        self.store.add_feedback(self.session_id, "edit", turn_idx=index, before=old.content, after=text,
                                payload={"role": old.role})
        self._truncate(index + 1)
        new = Turn(role=old.role, content=text, input=old.input, output=old.output, model=old.model,
                   latency_s=old.latency_s)
        self.episode.turns[index] = new
        self.store.replace_turn(self.session_id, index, new)

    def vote(self, index: int, liked: bool) -> None:
        if not 0 <= index < len(self.episode.turns) or self.episode.turns[index].role != "agent":
            raise SessionError("only the agent's messages can be liked or disliked")
        self.store.add_feedback(self.session_id, "like" if liked else "dislike", turn_idx=index)

    def rate(self, rating: int, comment: str = "") -> None:
        self.store.rate_session(self.session_id, rating, comment)
        self.episode.scores["rating"] = rating

    # -- the simulator's help -----------------------------------------------------------------
    def suggest_reply(self, simulator: SimulatedHuman) -> str:
        if self.expecting != "human":
            raise SessionError("the simulator can only suggest your reply")
        return simulator.replies([self.episode])[0]

    # -- internals ----------------------------------------------------------------------------
    def score(self) -> None:
        if self.task.free_form:  # the person's rating is the score
            self.store.finish_session(self.session_id, answer=self.episode.answer, reward=None, scores={},
                                      status="answered")
            return
        from simulators.scoring import score_episodes

        try:
            score_episodes([self.episode])
        except Exception as exc:  # noqa: BLE001 - e.g. the sandbox refuses this host: keep the answer, say why
            self.episode.reward, self.episode.scores = None, {"error": f"scoring failed: {exc}"}
            self.store.finish_session(self.session_id, answer=self.episode.answer, reward=None,
                                      scores=self.episode.scores, status="answered")
            return
        self.store.finish_session(self.session_id, answer=self.episode.answer, reward=self.episode.reward,
                                  scores=self.episode.scores)

    def _truncate(self, keep: int) -> None:
        del self.episode.turns[keep:]
        self.render_hashes = {i: h for i, h in self.render_hashes.items() if i < keep}
        self.episode.answer, self.episode.reward, self.episode.scores = None, None, {}
        self.store.truncate_turns(self.session_id, keep)

    def _render_into(self, view: AgentTurnView, text: str) -> None:
        if self.task.kind != "frontend" or self.renderer is None:
            return
        (page,) = render_and_store([text], self.renderer, self.store)
        view.render_hash, view.render_error = page.render_hash, page.render_error
