"""The simulated human of a ColBench conversation (the agent's side is ``simulators.prompts``).

The simulated human is an LLM that sees the
problem, the hidden information and the dialogue with the roles flipped; its replies are cleaned
so they stay brief and never leak code (ColBench caps them at 400 characters for backend tasks and
1000 for frontend tasks).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from functools import partial

from simulators.domain import Episode, Task
from simulators.llm.base import ChatModel, GenerationConfig, Message
from simulators.prompts import load_prompt

BACKEND_REPLY_LIMIT = 400
BACKEND_SENTENCES = 2  # a backend reply keeps at most two sentences
FRONTEND_REPLY_LIMIT = 1000
_FENCED_CODE = re.compile(r"```.*?(```|$)", re.DOTALL)
_HTML_BLOCK = re.compile(r"<(html|body|div|head|style|script)\b.*?(</\1>|$)", re.DOTALL | re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def clean_reply(text: str, *, limit: int, hidden: str = "", max_sentences: int | None = None) -> str:
    """Keep a simulated human's reply brief and free of code.

    Removes fenced code and HTML blocks, any line copied from the hidden reference, and a leading
    speaker label; keeps at most ``max_sentences`` sentences and ``limit`` characters.
    """
    text = _HTML_BLOCK.sub(" ", _FENCED_CODE.sub(" ", text))
    secret_lines = {ln.strip() for ln in hidden.splitlines() if len(ln.strip()) >= 12}
    kept = [ln for ln in text.splitlines()
            if ln.strip() and ln.strip() not in secret_lines and not ln.lstrip().startswith(("def ", "import "))]
    text = re.sub(r"^\s*(human|user|me)\s*:\s*", "", " ".join(ln.strip() for ln in kept), flags=re.IGNORECASE)
    if max_sentences:
        text = " ".join(_SENTENCE_END.split(text)[:max_sentences])
    text = text.strip()[:limit].strip()
    return text or "I don't know."


def reply_is_settled(text: str, *, hidden: str, max_sentences: int) -> bool:
    """Whether ``clean_reply(text + more, hidden=hidden, max_sentences=max_sentences)`` is the same
    for any ``more``: the reply already holds its first ``max_sentences`` sentences for good, so the
    simulator can stop generating (it is greedy: the kept text is what a longer run would keep).

    Conservative: False while the text has a backtick or ``<`` (a code or HTML block might be open),
    or while its unfinished last line could still turn into a line that ``clean_reply`` drops.
    """
    if "`" in text or "<" in text:
        return False
    secret_lines = {ln.strip() for ln in hidden.splitlines() if len(ln.strip()) >= 12}
    lines = text.splitlines()
    ends_line = bool(text) and text.splitlines(keepends=True)[-1] != lines[-1]
    complete, last = (lines, "") if ends_line else (lines[:-1], lines[-1] if lines else "")
    kept = [ln for ln in complete
            if ln.strip() and ln.strip() not in secret_lines and not ln.lstrip().startswith(("def ", "import "))]
    start = last.lstrip()
    if start and not start.startswith(("def ", "import ")):  # a line starting so is dropped whatever follows
        if "def ".startswith(start) or "import ".startswith(start):
            return False
        if any(secret.startswith(start.rstrip()) for secret in secret_lines):
            return False
        kept.append(last)
    text = re.sub(r"^\s*(human|user|me)\s*:\s*", "", " ".join(ln.strip() for ln in kept), flags=re.IGNORECASE)
    return len(_SENTENCE_END.split(text)) > max_sentences


class SimulatedHuman:
    """An LLM playing the human who holds the hidden information.

    Backend: sees the reference function. Frontend: sees the differences between the agent's
    latest page and the reference page, measured on the two rendered DOMs (text route, works with
    any model), or both screenshots when ``vision=True`` and the model accepts ``image_url`` parts
    (an OpenAI-compatible vision endpoint, as in ColBench).
    """

    def __init__(self, model: ChatModel, *, max_new_tokens: int = 160, vision: bool = False, renderer=None):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.vision = vision
        self._renderer = renderer

    @property
    def name(self) -> str:
        return f"simulator:{self.model.name}"

    @property
    def renderer(self):
        if self._renderer is None:
            from simulators.render import shared_renderer

            self._renderer = shared_renderer()
        return self._renderer

    def replies(self, episodes: Sequence[Episode]) -> list[str]:
        """The human's next message in each episode (last turn must be the agent's), batched."""
        if not episodes:
            return []
        conversations = [self.messages(e) for e in episodes]
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=0.0)
        if all(e.task.kind == "backend" for e in episodes):
            # A backend reply is cut to two sentences: generating past them changes nothing. The
            # reference lines of every task in the batch count as secret for every reply (stricter).
            hidden = "\n".join(e.task.hidden_information for e in episodes)
            config.stop_when = partial(reply_is_settled, hidden=hidden, max_sentences=BACKEND_SENTENCES)
        outputs = self.model.sample(conversations, n=1, config=config)
        return [self.clean(e.task, texts[0]) for e, texts in zip(episodes, outputs)]

    def clean(self, task: Task, text: str) -> str:
        if task.kind == "backend":
            return clean_reply(text, limit=BACKEND_REPLY_LIMIT, hidden=task.hidden_information,
                               max_sentences=BACKEND_SENTENCES)
        return clean_reply(text, limit=FRONTEND_REPLY_LIMIT, hidden=task.ground_truth)

    def messages(self, episode: Episode) -> list[Message]:
        task = episode.task
        if task.kind == "frontend":
            return self._frontend_messages(episode)
        system = load_prompt("human_backend").format(
            problem_description=task.problem_description, hidden_information=task.hidden_information)
        # Roles flipped: the agent's turns are what the simulator answers. The opening problem
        # statement is already in the system prompt, so the dialogue starts at the agent's turn.
        messages = [{"role": "system", "content": system}]
        messages += [{"role": "user" if t.role == "agent" else "assistant", "content": t.content}
                     for t in episode.turns[1:]]
        return messages

    def _frontend_messages(self, episode: Episode) -> list[Message]:
        from simulators.scoring.answers import extract_html
        from simulators.scoring.differences import describe_differences
        from simulators.scoring.frontend import reference_render

        task = episode.task
        agent_html = extract_html(episode.turns[-1].content)
        reference = reference_render(task, renderer=self.renderer)  # cached across turns
        draft = self.renderer.render(agent_html) if agent_html else None
        # Kept with the episode (by agent turn index): which of the agent's pages the human saw.
        episode.meta.setdefault("renders", {})[str(len(episode.turns) - 1)] = (
            "no html" if draft is None else "ok" if draft.ok else f"failed: {draft.error}")
        if self.vision:
            parts = [{"type": "text", "text": load_prompt("human_frontend_vision").format(
                problem_description=task.problem_description)}]
            if draft is not None and draft.ok:
                parts.append({"type": "image_url", "image_url": {"url": _data_url(draft.png)}})
            else:
                parts.append({"type": "text", "text": "The designer sent no page this time."})
            parts.append({"type": "image_url", "image_url": {"url": _data_url(reference.png)}})
            return [{"role": "user", "content": parts}]
        if draft is None:
            differences = "- The designer's message contains no HTML page to look at."
        elif not draft.ok:
            differences = f"- The designer's page failed to render ({draft.error})."
        else:
            differences = "\n".join(f"- {d}" for d in describe_differences(draft, reference)) or \
                "- No visible difference: the draft looks like the page you want."
        system = load_prompt("human_frontend").format(
            problem_description=task.problem_description, differences=differences)
        return [{"role": "system", "content": system},
                {"role": "user", "content": f"The designer says:\n{episode.turns[-1].content[:4000]}"}]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()

