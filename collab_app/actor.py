"""The app's current agent model, loaded once and shared by every browser tab.

Loading is lazy (the UI is up in seconds; the first message waits for the model) and guarded by
a lock, so two tabs asking at once load it once. A load failure is kept and re-raised as a clear
``ModelError`` for every caller until the spec changes, rather than retried on every message.
"""

from __future__ import annotations

import threading

from simulators.llm import ChatModel, ModelError, load_model


class ActorSlot:
    def __init__(self, spec: str):
        self.spec = spec
        self._model: ChatModel | None = None
        self._error: ModelError | None = None
        self._lock = threading.Lock()

    def get(self) -> ChatModel:
        with self._lock:
            if self._model is None and self._error is None:
                try:
                    self._model = load_model(self.spec)
                except ModelError as exc:
                    self._error = exc
                except Exception as exc:  # noqa: BLE001 - any load failure becomes a message in the UI
                    self._error = ModelError(f"could not load model {self.spec!r}: {exc}")
            if self._error is not None:
                raise self._error
            return self._model
