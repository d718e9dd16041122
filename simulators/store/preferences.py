"""Turn-level preference pairs from what people did in the app.

* an **edit** of an agent message: the edited text is chosen over the original;
* a **regeneration** whose new reply is then **liked**: the new reply is chosen over the discarded;
* a **vote** between two models' replies to the same prompt (Compare tab): the winner is chosen.
  Only round votes with a winner make pairs: ties, both-bad and the final overall vote (which
  judges whole conversations, not one turn) do not. See ``collab_app.comparison`` for the payload.

Each pair carries the agent's exact prompt at that turn, so it is a TRL preference row
(``prompt``, ``chosen``, ``rejected``) and a direct DPO pair for the actor, and the messages that
prompt was made of (``simulators.prompts.agent_messages`` of the turns before it), for TRL's
conversational format (``to_trl_conversational``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial

from simulators.domain import Episode
from simulators.llm.base import Message
from simulators.prompts import agent_messages
from simulators.store.sessions import SessionStore, Vote


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    source: str  # edit | regenerate+like | vote
    session_id: str
    turn_idx: int | None
    messages: list[Message] = field(default_factory=list, compare=False)  # what ``prompt`` was made of

    def to_trl(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def to_trl_conversational(self) -> dict[str, list[Message]]:
        """TRL's conversational preference row: the prompt as messages, each answer as one."""
        return {"prompt": self.messages, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    def to_dict(self) -> dict:
        row = asdict(self)
        del row["messages"]  # the prompt says it; the conversational export has them
        return row


def preference_pairs(store: SessionStore) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    by_session: dict[str, list[dict]] = {}
    for event in store.feedback():
        by_session.setdefault(event["session_id"], []).append(event)
    for session_id, events in by_session.items():
        episode = store.episode(session_id)  # its turns carry each agent turn's exact prompt
        pair = partial(_pair, episode)
        for i, event in enumerate(events):
            index = event["turn_idx"]
            turn = episode.turns[index] if index is not None and 0 <= index < len(episode.turns) else None
            if event["kind"] == "vote":
                vote = Vote.from_payload(event["payload"])
                chosen, rejected = (vote.a, vote.b) if vote.winner == "a" else (vote.b, vote.a)
                if vote.winner in ("a", "b") and not vote.final and vote.prompt and chosen != rejected:
                    pairs.append(pair(vote.prompt, chosen, rejected, "vote", index))
                continue
            if turn is None or not turn.input or turn.role != "agent":
                continue
            if event["kind"] == "edit" and event["before"] != event["after"]:
                pairs.append(pair(turn.input, event["after"], event["before"], "edit", index))
            elif event["kind"] == "regenerate" and event["after"]:
                liked_later = any(e["kind"] == "like" and e["turn_idx"] == index for e in events[i + 1:])
                if liked_later and event["after"] != event["before"]:
                    pairs.append(pair(turn.input, event["after"], event["before"], "regenerate+like", index))
    return pairs


def _pair(episode: Episode, prompt: str, chosen: str, rejected: str, source: str, index: int | None) -> PreferencePair:
    """A pair on the agent turn at ``index`` of ``episode``, with the messages its prompt was made of."""
    before = replace(episode, turns=episode.turns[:index])
    return PreferencePair(prompt, chosen, rejected, source, episode.meta["session_id"], index, agent_messages(before))
