"""CLIP image similarity, the frontend reward of the paper (ColBench: cosine similarity of CLIP
ViT-B/32 image embeddings of the agent's page and the reference page).

Weights are open_clip ``ViT-B-32`` with the ``openai`` pretrained tag (the OpenAI checkpoint the
paper uses), looked for in this order:

1. an explicit ``weights`` argument (a checkpoint file, or a folder holding one);
2. the ``COLLAB_CLIP_WEIGHTS`` environment variable (same);
3. the Hugging Face hub cache (``timm/vit_base_patch32_clip_224.openai``, as open_clip stores it).

Nothing is downloaded unless ``load_clip(download=True)`` is asked for (then open_clip's normal
loading runs, which respects ``HF_HUB_OFFLINE``), so scoring never waits on a network that is not
there. When no weights are found :func:`load_clip` raises :class:`ClipUnavailable` saying how to
provide them; scoring then records why and leaves the ``clip`` score out. A randomly initialised
model is never passed off as CLIP: :class:`ClipScorer` accepts any model, and only the tests build
one with ``pretrained=None`` to check the plumbing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

MODEL_NAME = "ViT-B-32"
PRETRAINED_TAG = "openai"
HF_REPO = "timm/vit_base_patch32_clip_224.openai"
CHECKPOINT_NAMES = (  # what open_clip writes to (or reads from) a model folder, best first
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "ViT-B-32.pt",
)
WEIGHTS_ENV = "COLLAB_CLIP_WEIGHTS"

HOW_TO_PROVIDE = (
    "To enable CLIP scoring, provide the OpenAI ViT-B-32 weights in one of these ways: "
    f"(a) set {WEIGHTS_ENV} to a checkpoint file (open_clip_pytorch_model.bin or "
    f"open_clip_model.safetensors from the Hugging Face repo {HF_REPO}, or OpenAI's ViT-B-32.pt) "
    "or to a folder that holds one; (b) fill the Hugging Face cache once on a machine with internet: "
    "python -m simulators.scoring.clip --download (copy ~/.cache/huggingface along if needed). "
    "Until then frontend rewards fall back to the design score."
)


class ClipUnavailable(RuntimeError):
    """CLIP weights could not be found or loaded; the message says how to provide them."""


def _checkpoint_in(path: Path) -> Path:
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise ClipUnavailable(f"no CLIP checkpoint ({', '.join(CHECKPOINT_NAMES)}) in folder {path}. {HOW_TO_PROVIDE}")
    if not path.is_file():
        raise ClipUnavailable(f"CLIP weights not found at {path}. {HOW_TO_PROVIDE}")
    return path


def _cached_hub_checkpoint() -> Path | None:
    """The open_clip checkpoint in the Hugging Face cache, looked up without any network call."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in CHECKPOINT_NAMES[:2]:
        hit = try_to_load_from_cache(HF_REPO, filename)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original ViT-B-32.pt is a TorchScript archive, which needs weights_only=False."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_clip(
    weights: str | os.PathLike | None = None, *, download: bool = False, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load open_clip ViT-B-32 with OpenAI weights: returns ``(model, preprocess)`` in eval mode.

    Raises :class:`ClipUnavailable` (with instructions) when no weights can be found.
    """
    source = weights or os.environ.get(WEIGHTS_ENV)
    checkpoint = _checkpoint_in(Path(source).expanduser()) if source else _cached_hub_checkpoint()
    if checkpoint is None and not download:
        raise ClipUnavailable(f"no CLIP weights found (checked {WEIGHTS_ENV} and the Hugging Face cache). {HOW_TO_PROVIDE}")
    try:
        import open_clip
    except ImportError as exc:
        raise ClipUnavailable(f"open_clip is not installed ({exc}); pip install open_clip_torch") from exc
    try:
        if checkpoint is not None:
            # OpenAI's weights were trained with QuickGELU; a file path does not carry that flag.
            model, _, preprocess = open_clip.create_model_and_transforms(
                MODEL_NAME,
                pretrained=str(checkpoint),
                force_quick_gelu=True,
                weights_only=not _is_torchscript(checkpoint),
                device=device,
            )
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                MODEL_NAME, pretrained=PRETRAINED_TAG, device=device
            )
    except Exception as exc:
        where = checkpoint or f"the Hugging Face hub ({HF_REPO})"
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise ClipUnavailable(f"could not load CLIP weights from {where}: {first_line}. {HOW_TO_PROVIDE}") from exc
    model.eval()
    log.info("CLIP %s loaded from %s", MODEL_NAME, checkpoint or "the Hugging Face hub")
    return model, preprocess


ImageLike = Image.Image | bytes


def image_key(image: ImageLike) -> str:
    """Cache key: sha256 of the PNG bytes, or of the pixels (mode, size, data) for a PIL image."""
    digest = hashlib.sha256()
    if isinstance(image, bytes | bytearray):
        digest.update(image)
    else:
        digest.update(f"{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class ClipScorer:
    """Image embeddings with a cache keyed by image hash, computed in batches.

    Thread-safe: the cache is guarded by a lock and model calls are serialised.
    """

    def __init__(self, model: Any, preprocess: Any, *, device: str = "cpu", batch_size: int = 16, cache_size: int = 2048):
        self.model = model
        self.preprocess = preprocess
        self.device = device
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, images: Sequence[ImageLike]) -> Any:
        """L2-normalised embeddings, one row per image (a ``torch.Tensor`` of shape N x D)."""
        import torch

        keys = [image_key(image) for image in images]
        with self._lock:
            todo: dict[str, ImageLike] = {}
            for key, image in zip(keys, images):
                if key in self._cache:
                    self.cache_hits += 1
                    self._cache.move_to_end(key)
                elif key not in todo:
                    self.cache_misses += 1
                    todo[key] = image
                else:  # the same image twice in one call is embedded once
                    self.cache_hits += 1
            pending = list(todo.items())
            fresh: dict[str, Any] = {}
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start : start + self.batch_size]
                batch = torch.stack([self.preprocess(_as_rgb(image)) for _, image in chunk]).to(self.device)
                with torch.no_grad():
                    features = self.model.encode_image(batch).float()
                features = features / features.norm(dim=-1, keepdim=True)
                for (key, _), row in zip(chunk, features.cpu()):
                    fresh[key] = row
            for key, row in fresh.items():
                self._cache[key] = row
            vectors = [fresh.get(key) if key in fresh else self._cache[key] for key in keys]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return torch.stack(vectors) if vectors else torch.empty(0)

    def similarity(self, image_a: ImageLike, image_b: ImageLike) -> float:
        """Cosine similarity of the two images' CLIP embeddings."""
        return self.similarities([(image_a, image_b)])[0]

    def similarities(self, pairs: Sequence[tuple[ImageLike, ImageLike]]) -> list[float]:
        """Cosine similarity for each pair, embedding all distinct images in shared batches."""
        if not pairs:
            return []
        vectors = self.embed([image for pair in pairs for image in pair])
        firsts, seconds = vectors[0::2], vectors[1::2]
        return [float(v) for v in (firsts * seconds).sum(dim=-1)]


def _as_rgb(image: ImageLike) -> Image.Image:
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    return image.convert("RGB")


_default: tuple[ClipScorer | None, str] | None = None
_default_lock = threading.Lock()


def default_scorer() -> tuple[ClipScorer | None, str]:
    """The process-wide scorer and, when it is None, why (tried once per process)."""
    global _default
    with _default_lock:
        if _default is None:
            try:
                _default = (ClipScorer(*load_clip()), "")
            except ClipUnavailable as exc:
                log.warning("CLIP unavailable: %s", exc)
                _default = (None, str(exc))
        return _default


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Check or fetch the CLIP weights used for frontend rewards.")
    parser.add_argument("--download", action="store_true", help="let open_clip download the weights into the HF cache")
    parser.add_argument("--weights", help=f"checkpoint file or folder (default: ${WEIGHTS_ENV}, then the HF cache)")
    args = parser.parse_args()
    try:
        load_clip(args.weights, download=args.download)
    except ClipUnavailable as exc:
        raise SystemExit(f"CLIP unavailable: {exc}") from None
    print(f"CLIP {MODEL_NAME} ({PRETRAINED_TAG}) weights are available.")


if __name__ == "__main__":
    main()
