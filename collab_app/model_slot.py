"""The app's agent model, shared by every browser tab, with hot swap.

The spec ``current`` follows the model registry: it serves the registry's current version (or the
base model while none is set), and when the pointer changes — a promotion or rollback from the
Train tab or from ``python -m collab_app models`` in another process — the next session gets the
new version without a restart. A session in progress keeps the model object it started with, so
its turns keep their version. Any other spec is served as it is.

Loading is lazy and guarded by a lock, so two tabs asking at once load once. A load failure is
kept and re-raised as a clear ``ModelError`` until the resolved spec changes.
"""

from __future__ import annotations

import threading

from simulators.llm import ChatModel, ModelError, load_model
from simulators.llm.specs import current_spec


class ModelSlot:
    def __init__(self, spec: str, base: str = "default"):
        self.spec = spec
        self.base = base  # served by ``current`` while the registry has no current version
        self._loaded_spec: str | None = None
        self._model: ChatModel | None = None
        self._error: tuple[str, ModelError] | None = None
        self._lock = threading.Lock()

    def resolved_spec(self) -> str:
        """The model spec served right now (``registry:vNNNN`` or the base for ``current``)."""
        return current_spec(self.spec, self.base)

    @property
    def ready(self) -> bool:
        """Whether the model served now is loaded (``get`` returns at once)."""
        return self._model is not None and self._loaded_spec == self.resolved_spec()

    def get(self) -> ChatModel:
        target = self.resolved_spec()
        with self._lock:
            if self._loaded_spec == target and self._model is not None:
                return self._model
            if self._error is not None and self._error[0] == target:
                raise self._error[1]
            try:
                model = load_model(target)
            except ModelError as exc:
                self._error = (target, exc)
                raise
            except Exception as exc:  # noqa: BLE001 - any load failure becomes a message in the UI
                self._error = (target, ModelError(f"could not load model {target!r}: {exc}"))
                raise self._error[1] from exc
            self._model, self._loaded_spec, self._error = model, target, None
            return model
