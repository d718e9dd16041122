"""What every tab shares: the agent model, the simulator, the session store, the task catalogue
and the page renderer. Heavy parts (models, the browser) load on first use."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import gradio as gr

from collab_app.catalog import TaskCatalog
from collab_app.cli import AppConfig
from collab_app.messages import valid_unicode
from collab_app.model_slot import ModelSlot
from collab_app.session import LiveSession
from collab_app.training_jobs import TrainingManager
from simulators.domain import Task
from simulators.humans import SimulatedHuman
from simulators.llm.base import ModelError
from simulators.llm.registry import ModelRegistry
from simulators.llm.specs import FOLLOW_REGISTRY
from simulators.store import SessionStore


@dataclass
class AppContext:
    config: AppConfig
    actor: ModelSlot = field(init=False)
    simulator_slot: ModelSlot = field(init=False)
    store: SessionStore = field(init=False)
    catalog: TaskCatalog = field(init=False)
    training: TrainingManager = field(init=False)
    _reference_images: dict = field(default_factory=dict, init=False)
    _model_slots: dict = field(default_factory=dict, init=False)  # spec -> ModelSlot (Compare tab)

    def __post_init__(self) -> None:
        self.actor = ModelSlot(self.config.model, base=self.config.base)
        same = self.config.simulator in ("", self.config.model)
        self.simulator_slot = self.actor if same else ModelSlot(self.config.simulator)
        self.store = SessionStore(self.config.db or None)
        self.catalog = TaskCatalog(self.config.tasks)
        self.training = TrainingManager(self.store, eval_tasks=",".join(self.config.tasks), base=self.config.base,
                                        simulator=self._simulator_spec_for_training())
        # Load the agent in the background: the UI is up at once and the first session rarely waits.
        threading.Thread(target=self._preload, daemon=True, name="preload-agent").start()

    def _simulator_spec_for_training(self) -> str:
        """The simulator the Train tab's evaluation gate uses: the app's own, as a loadable spec."""
        spec = self.config.simulator or self.config.model
        return self.config.base if spec == FOLLOW_REGISTRY else spec

    def _preload(self) -> None:
        try:
            self.actor.get()
        except ModelError:
            pass  # kept by the slot and shown to the first person who starts a session

    def promote(self, version: str | None, reason: str = "promote") -> None:
        """Serve ``version`` (None = the base model) to new sessions, loading it before it is announced."""
        registry = ModelRegistry()
        if version is None:
            registry.serve_base(reason=reason)
        else:
            registry.set_current(version, reason=reason)
        self.actor.get()  # an app following the registry loads the new version now, not mid-session

    def model_slot(self, spec: str) -> ModelSlot:
        """Any model by spec, loaded once and shared by every tab; the agent's spec, or the spec it
        serves now (``default`` under ``current`` before any promotion), is the agent's slot."""
        spec = spec.strip()
        if spec in (self.config.model, self.actor.resolved_spec()):
            return self.actor
        return self._model_slots.setdefault(spec, ModelSlot(spec))

    def person_message(self, text: str | None, empty: str = "Type a message first.") -> str:
        """A person's message, stripped and valid Unicode; refused with a notice when empty or over
        the size limit."""
        text = valid_unicode(text or "").strip()
        if not text:
            raise gr.Error(empty)
        limit = self.config.max_message_chars
        if len(text) > limit:
            raise gr.Error(f"That message is {len(text):,} characters; the limit is {limit:,}.")
        return text

    def frontend_setup_warnings(self) -> list[str]:
        """What is missing for pages to render as their authors meant (the Tailwind files), and how to add it."""
        from simulators.paths import web_dir
        from simulators.render import asset_warnings

        return asset_warnings(web_dir())

    @property
    def renderer(self):
        from simulators.render import shared_renderer  # the browser starts on first use

        return shared_renderer()

    def simulator(self) -> SimulatedHuman:
        return SimulatedHuman(self.simulator_slot.get())

    def new_session(self, task: Task, person: str, mode: str) -> LiveSession:
        return LiveSession(task=task, store=self.store, agent=self.actor.get(), human_name=f"person:{person}",
                           mode=mode, max_new_tokens=self.config.max_new_tokens,
                           renderer=self.renderer if task.kind == "frontend" else None)

    # The task pickers' handlers (Collaborate, Compare). Uploads are a browser session's own
    # (collab_app.catalog): every lookup names its owner.
    def task_choices(self, kind: str, request: gr.Request):
        """The task dropdown's choices for ``kind``: the loaded tasks and this page's uploads."""
        return gr.update(choices=self.catalog.choices(kind, request.session_hash), value=None)

    def random_task(self, kind: str, request: gr.Request) -> tuple[str, str]:
        """A random task's id for the dropdown, and an empty notice."""
        try:
            return self.catalog.random(kind, owner=request.session_hash).id, ""
        except KeyError as exc:
            raise gr.Error(str(exc)) from exc

    def reference_image(self, task: Task):
        """The rendered reference page (cached per task), or None when it does not render."""
        if task.id not in self._reference_images:
            result = self.renderer.render(task.ground_truth)
            self._reference_images[task.id] = result.image if result.ok else None
        return self._reference_images[task.id]
