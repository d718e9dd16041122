"""Training data: episodes from the session database or sweet_rl JSONL, trajectory pairs, turn
records, human preference pairs, and the token layout the critic reads.

Pairing (which trajectory of a task is preferred) follows the reference scripts:

* ``success`` (backend, as sweet_rl's ``evaluate_code.py``): the best trajectory of a task, when it
  succeeded, is chosen over every trajectory of that task with a lower reward;
* ``threshold`` (frontend): every two trajectories of a task whose rewards differ by at least
  ``min_reward_gap`` (0.1 by default) make a pair;
* ``auto``: ``success`` for backend tasks, ``threshold`` for frontend tasks.

The reward used for ordering is configurable (``reward_key``): the episode's ``reward`` or any of
its ``scores`` (``success``, ``tests_passed``, ``clip``, ``design``, ``rating``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulators.domain import Episode
from simulators.jsonl import jsonl_rows
from simulators.prompts import agent_messages
from simulators.store import SessionStore
from simulators.store.preferences import preference_pairs
from simulators.tasks import TaskFileError, split_paths
from simulators.trajectories import load_episodes

REWARD_KEYS = ("reward", "success", "tests_passed", "clip", "design", "rating")
PAIRING_RULES = ("auto", "success", "threshold")
# How the reference scripts show c to the critic: a sentence before the interaction.
PRIVILEGED_TEMPLATE = "In light that the final answer is: {c}.\n"


@dataclass
class DataOptions:
    """Where the trajectories come from and how they are paired (shared by every command)."""

    data: str = field(default="", metadata={
        "help": "sessions database (SQLite, as written by the app) or sweet_rl trajectory JSONL; "
                "several, separated by commas"})
    kind: str = field(default="", metadata={"help": "only tasks of this kind: backend or frontend (empty = both)"})
    reward_key: str = field(default="reward", metadata={
        "help": "what orders trajectories: " + " | ".join(REWARD_KEYS)})
    pairing: str = field(default="auto", metadata={
        "help": "auto | success (best successful trajectory over lower-reward ones) | threshold "
                "(reward gap >= min_reward_gap); auto = success for backend, threshold for frontend"})
    min_reward_gap: float = field(default=0.1, metadata={"help": "threshold pairing: least reward difference"})
    preferences: str = field(default="", metadata={
        "help": "turn-level human preference pairs besides those in --data's session databases: JSONL rows "
                "with prompt, chosen, rejected (and privileged, the task's c); several, separated by commas"})


# -- episodes --------------------------------------------------------------------------------------


def is_session_db(path: str | Path) -> bool:
    """Whether ``path`` is an SQLite database (else a JSONL file), asked of SQLite itself.

    Never by reading the file's header with ``open``: closing any descriptor of a database file
    drops every POSIX lock this process holds on it, and then another process closing its last
    connection deletes the write-ahead log that the app is still writing to (its new sessions
    would be lost). SQLite's own opens share the process's descriptors and locks safely.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version").fetchone()
        return True
    except sqlite3.DatabaseError:
        return False


def read_episodes(sources: str, kind: str = "") -> list[Episode]:
    """Episodes from a comma-separated list of session databases and/or trajectory JSONL files."""
    if not sources.strip():
        raise TaskFileError("no training data given: pass --data DB_OR_JSONL")
    episodes: list[Episode] = []
    for source in split_paths(sources):
        if is_session_db(source):
            episodes.extend(SessionStore(source).episodes(limit=10**9))
        else:
            report = load_episodes(source)
            if not report.items and report.errors:
                raise TaskFileError(f"{source}: no valid trajectory; first problem: {report.errors[0]}")
            episodes.extend(report.items)
    return [e for e in episodes if not kind or e.task.kind == kind]


def human_preference_pairs(data: str, preferences: str = "") -> list[dict]:
    """Turn-level pairs people made in the app (edits, liked regenerations, votes).

    Rows ``{prompt, chosen, rejected, source, task_id, privileged}`` (``privileged``: the task's c,
    for the critic) from every session database in ``data`` and every preference JSONL file in
    ``preferences`` (comma-separated; rows with at least prompt, chosen and rejected, as the Train
    tab snapshots them or ``collab_app export --format trl`` writes them).
    """
    rows: list[dict] = []
    for source in split_paths(data):
        if is_session_db(source):
            rows += store_preference_rows(SessionStore(source))
    for path in split_paths(preferences):
        if not Path(path).is_file():
            raise TaskFileError(f"{path}: no such file")
        for lineno, row, error in jsonl_rows(Path(path)):
            fields = ("prompt", "chosen", "rejected")
            if error is None and not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in fields)):
                error = "a preference row needs the strings prompt, chosen and rejected"
            if error is not None:
                raise TaskFileError(f"{path}:{lineno}: {error}")
            rows.append({"source": "file", "task_id": "", "privileged": "", **row})
    return rows


def store_preference_rows(store: SessionStore) -> list[dict]:
    """The turn-level pairs of one session store as preference rows, each with its task's c."""
    rows, tasks = [], {}
    for pair in preference_pairs(store):
        if pair.session_id not in tasks:
            tasks[pair.session_id] = store.episode(pair.session_id).task
        task = tasks[pair.session_id]
        rows.append({**pair.to_trl(), "source": pair.source, "task_id": task.id,
                     "privileged": task.privileged_information})
    return rows


def data_snapshot(sources: str, episodes: Sequence[Episode]) -> dict:
    """What a model was trained on: the paths, a hash of the episodes' content, and their count."""
    digest = hashlib.sha256()
    for episode in episodes:
        digest.update(episode.to_json().encode())
        digest.update(b"\n")
    return {"path": sources, "hash": digest.hexdigest(), "count": len(episodes)}


# -- rewards and pairs -----------------------------------------------------------------------------


def outcome(episode: Episode, reward_key: str) -> float | None:
    """The number that orders trajectories, or None when the episode has no such score."""
    if reward_key not in REWARD_KEYS:
        raise ValueError(f"unknown reward key {reward_key!r}: use one of {', '.join(REWARD_KEYS)}")
    value = episode.reward if reward_key == "reward" else episode.scores.get(reward_key)
    if value is None or isinstance(value, str):
        return None
    return float(value)


def succeeded(episode: Episode, value: float) -> bool:
    """Success as evaluate_code.py defines it: all tests passed (reward 1), or the ``success`` score."""
    if "success" in episode.scores and episode.scores["success"] is not None:
        return bool(episode.scores["success"])
    return value >= 1.0


def pairing_rule(pairing: str, kind: str) -> str:
    if pairing not in PAIRING_RULES:
        raise ValueError(f"unknown pairing {pairing!r}: use one of {', '.join(PAIRING_RULES)}")
    if pairing == "auto":
        return "success" if kind == "backend" else "threshold"
    return pairing


def episodes_by_task(episodes: Sequence[Episode], reward_key: str) -> dict[str, list[tuple[int, float]]]:
    """(episode index, outcome) of every scored episode with agent turns, grouped by task id."""
    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, episode in enumerate(episodes):
        value = outcome(episode, reward_key)
        if value is not None and episode.agent_turns:
            groups[episode.task.id].append((i, value))
    return groups


def trajectory_pairs(
    episodes: Sequence[Episode], reward_key: str = "reward", pairing: str = "auto", min_reward_gap: float = 0.1,
) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs into ``episodes``, always within one task."""
    pairs: list[tuple[int, int]] = []
    for members in episodes_by_task(episodes, reward_key).values():
        rule = pairing_rule(pairing, episodes[members[0][0]].task.kind)
        if rule == "success":
            best, best_value = max(members, key=lambda m: m[1])
            if succeeded(episodes[best], best_value):
                pairs += [(best, i) for i, value in members if value < best_value]
        else:
            pairs += [(i, j) for i, vi in members for j, vj in members if vi - vj >= min_reward_gap]
    return pairs


def best_trajectories(episodes: Sequence[Episode], reward_key: str = "reward", min_reward: float = 1.0) -> list[int]:
    """Rejection fine-tuning's data: the best trajectory of each task, when its outcome >= ``min_reward``."""
    chosen = []
    for members in episodes_by_task(episodes, reward_key).values():
        best, value = max(members, key=lambda m: m[1])
        if value >= min_reward:
            chosen.append(best)
    return sorted(chosen)


# -- turn records (the actor's data) -----------------------------------------------------------------


@dataclass
class TurnRecord:
    """One agent turn: the exact prompt o_t the actor saw, what it said, and the task's c."""

    prompt: str
    output: str
    privileged: str
    task_id: str
    episode: int  # index into the episode list
    turn: int  # index among the episode's agent turns


def turn_records(episodes: Sequence[Episode], fraction: float = 0.1, seed: int = 0) -> list[TurnRecord]:
    """Every agent turn (that recorded its prompt) of a random ``fraction`` of the trajectories."""
    usable = [i for i, e in enumerate(episodes) if any(t.input for t in e.agent_turns)]
    if not usable:
        return []
    count = max(1, round(len(usable) * fraction))
    selected = sorted(random.Random(seed).sample(usable, count))
    records = []
    for i in selected:
        episode = episodes[i]
        for k, turn in enumerate(episode.agent_turns):
            if turn.input:
                records.append(TurnRecord(prompt=turn.input, output=turn.output or turn.content,
                                          privileged=episode.task.privileged_information,
                                          task_id=episode.task.id, episode=i, turn=k))
    return records


# -- tokens ------------------------------------------------------------------------------------------


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as is: special tokens come from the text (the chat template wrote them)."""
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def privileged_prefix(privileged: str) -> str:
    return PRIVILEGED_TEMPLATE.format(c=privileged)


def privileged_limit(max_length: int, max_privileged_tokens: int) -> int:
    """How many tokens of c a sequence keeps: ``max_privileged_tokens``, and never more than half
    of ``max_length``, so the dialogue always keeps at least the other half."""
    return min(max_privileged_tokens, max_length // 2)


@dataclass
class DialogueTokens:
    """A trajectory as one token sequence: [c] + dialogue, with the agent turn of every token.

    ``token_turn[i]`` is the index of the agent turn token i belongs to, or -1 for everything else
    (c, the chat template's markup, the system prompt and the human's words).
    """

    input_ids: list[int]
    token_turn: list[int]
    num_turns: int

    @property
    def key(self) -> str:
        """Identifies the sequence and its scored tokens (for caching reference log-probs)."""
        return hashlib.sha1(repr((self.input_ids, self.token_turn)).encode()).hexdigest()


def agent_turn_prompts(episode: Episode, tokenizer) -> list[str]:
    """The prompt each agent turn was generated from, o_t as text (see ``agent_turn_texts``)."""
    return agent_turn_texts(episode, tokenizer)[0]


def agent_turn_texts(episode: Episode, tokenizer) -> tuple[list[str], list[str]]:
    """(o_t, a_t as the dialogue shows it) for every agent turn.

    The recorded ``Turn.input`` prompts are used when they form one growing dialogue: each prompt
    continues the previous one with the previous agent message, as a chat template renders a
    conversation. The message may appear there as the agent wrote it or with its surrounding
    whitespace trimmed (templates that ``| trim`` the content, as Llama 3's does); a_t is the
    message as the next prompt shows it, so the trajectory is one sequence the model really saw
    (the last message, which no prompt shows again, as written). When the recorded prompts do not
    chain, the dialogue is rendered again with ``tokenizer``'s template.
    """
    agent = episode.agent_turns
    stored = [t.input for t in agent]
    if all(stored) and (messages := chained_messages(stored, agent)) is not None:
        return stored, messages
    conversation = agent_messages(episode)
    rendered = [tokenizer.apply_chat_template(conversation[:j], tokenize=False, add_generation_prompt=True)
                for j, m in enumerate(conversation) if m["role"] == "assistant"]
    if (messages := chained_messages(rendered, agent)) is None:
        raise ValueError(f"task {episode.task.id}: the chat template does not render the dialogue as a growing "
                         "prefix, so the agent's turns cannot be located exactly")
    return rendered, messages


def chained_messages(prompts: Sequence[str], agent_turns) -> list[str] | None:
    """Each agent message as the following prompt shows it, or None when the prompts do not chain
    (prompt k + 1 = prompt k + message k, as written or whitespace-trimmed, + the template's markup)."""
    shown = []
    for k in range(len(prompts) - 1):
        if not prompts[k + 1].startswith(prompts[k]):
            return None
        following, message = prompts[k + 1][len(prompts[k]):], agent_turns[k].content
        # Longest form first: a message that ends in a space is not cut when the template keeps it.
        form = next((f for f in (message, message.rstrip(), message.lstrip(), message.strip())
                     if following.startswith(f)), None)
        if form is None:
            return None
        shown.append(form)
    return shown + [agent_turns[-1].content]


_MESSAGE_PROBE = "agent-message-probe"


@functools.lru_cache(maxsize=16)
def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends an agent message: the special token the chat template writes right after
    an assistant message (ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>``, Gemma's
    ``<end_of_turn>``), else the end-of-sequence token. The model emits it to stop, so it is part
    of every action a_t that training scores (as in the reference scripts' masks): without it the
    agent never learns when to stop."""
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MESSAGE_PROBE}], tokenize=False)
        after = encode(tokenizer, rendered.split(_MESSAGE_PROBE, 1)[1])
    except Exception:  # no chat template, or one that refuses this probe: fall back to end-of-sequence
        after = []
    if after and (after[0] in tokenizer.all_special_ids or getattr(
            tokenizer.added_tokens_decoder.get(after[0]), "special", False)):
        return after[0]
    return tokenizer.eos_token_id


def action_ids(tokenizer, action: str) -> list[int]:
    """The tokens of one action a_t as the agent produced it: its text, then the end-of-turn token."""
    eot = end_of_turn_id(tokenizer)
    return encode(tokenizer, action) + ([eot] if eot is not None else [])


def dialogue_tokens(
    episode: Episode, tokenizer, *, privileged: bool = True, max_length: int = 4096,
    max_privileged_tokens: int = 2048,
) -> DialogueTokens:
    """The critic's view of a trajectory, tokenised piece by piece so turn boundaries are exact.

    Pieces alternate between context (c, template markup, system prompt, the human's words) and
    agent messages; each is tokenised on its own, so the agent's tokens of turn t are exactly
    ``action_ids(a_t)``: the message, then the end-of-turn token (the template's own, which opens
    the following context, counts as the agent's). ``c`` is cut to ``privileged_limit``; a
    dialogue that still does not fit loses its oldest tokens.
    """
    agent = episode.agent_turns
    if not agent:
        raise ValueError(f"task {episode.task.id}: the episode has no agent turn")
    prompts, messages = agent_turn_texts(episode, tokenizer)
    eot = end_of_turn_id(tokenizer)
    dialogue_ids: list[int] = []
    token_turn: list[int] = []
    consumed = 0  # characters of the last prompt already tokenised
    for t, (prompt, message) in enumerate(zip(prompts, messages)):
        context = encode(tokenizer, prompt[consumed:])
        if t > 0 and eot is not None and context[:1] == [eot]:  # the template closed message t-1 with it
            dialogue_ids.append(eot)
            token_turn.append(t - 1)
            context = context[1:]
        action = encode(tokenizer, message)
        dialogue_ids += context + action
        token_turn += [-1] * len(context) + [t] * len(action)
        consumed = len(prompt) + len(message)
    if eot is not None:  # the agent closed its last message with it
        dialogue_ids.append(eot)
        token_turn.append(len(agent) - 1)
    prefix = encode(tokenizer, privileged_prefix(episode.task.privileged_information)) if privileged else []
    prefix = prefix[:privileged_limit(max_length, max_privileged_tokens)]
    keep = max(max_length - len(prefix), 1)
    dialogue_ids, token_turn = dialogue_ids[-keep:], token_turn[-keep:]
    return DialogueTokens(input_ids=prefix + dialogue_ids, token_turn=[-1] * len(prefix) + token_turn,
                          num_turns=len(agent))


def action_tokens(
    tokenizer, privileged: str | None, prompt: str, action: str, *, max_length: int = 4096,
    max_privileged_tokens: int = 2048,
) -> DialogueTokens:
    """The critic's view of one action a after the prompt o_t: [c] + o_t + a, a being its one
    scored turn (a turn-level preference pair is two such one-turn trajectories, and best-of-N
    ranking scores each candidate this way). ``privileged=None`` leaves c out; o_t loses its
    oldest tokens when the whole does not fit."""
    prefix = encode(tokenizer, privileged_prefix(privileged))[:privileged_limit(max_length, max_privileged_tokens)] \
        if privileged is not None else []
    context, act = encode(tokenizer, prompt), action_ids(tokenizer, action)
    keep = max(max_length - len(prefix), 1)
    ids, turns = (context + act)[-keep:], ([-1] * len(context) + [0] * len(act))[-keep:]
    return DialogueTokens(input_ids=prefix + ids, token_turn=[-1] * len(prefix) + turns, num_turns=1)


def prompt_completion_tokens(tokenizer, prompt: str, completion: str, *, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) for a turn-level example; the completion ends with the
    end-of-turn token (``action_ids``) so the actor learns to stop, and the prompt loses its oldest
    tokens when the pair does not fit."""
    completion_ids = action_ids(tokenizer, completion)[: max_length - 1]
    prompt_ids = encode(tokenizer, prompt)[-(max_length - len(completion_ids)):]
    return prompt_ids, completion_ids
