"""CLIP plumbing. No real weights can be had offline, so the scorer is exercised with a randomly
initialised ViT-B-32 (``pretrained=None``), which is allowed here and only here; loading checks
use a checkpoint file written from that model."""

from __future__ import annotations

import io

import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from simulators.scoring import clip
from simulators.scoring.clip import ClipScorer, ClipUnavailable, default_scorer, image_key, load_clip


@pytest.fixture(scope="module")
def random_clip():
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(clip.MODEL_NAME, pretrained=None)
    model.eval()
    return model, preprocess


def picture(colour: str, mark: tuple[int, int] | None = None, size=(320, 240)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    if mark is not None:
        ImageDraw.Draw(image).rectangle((mark[0], mark[1], mark[0] + 80, mark[1] + 60), fill="white")
    return image


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_identical_images_have_similarity_one(random_clip):
    scorer = ClipScorer(*random_clip)
    image = picture("navy", (20, 30))
    assert scorer.similarity(image, image.copy()) == pytest.approx(1.0, abs=1e-5)
    assert scorer.similarity(png_bytes(image), image) == pytest.approx(1.0, abs=1e-5)
    assert scorer.similarity(image, picture("orange", (200, 150))) < 0.9999


def test_batch_equals_one_by_one(random_clip):
    images = [picture("navy", (20, 30)), picture("darkgreen"), picture("orange", (200, 150)), picture("gray", (5, 5), size=(200, 600))]
    batched = ClipScorer(*random_clip, batch_size=3).embed(images)
    single = ClipScorer(*random_clip)
    one_by_one = torch.cat([single.embed([image]) for image in images])
    assert batched.shape == (4, one_by_one.shape[1])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_cache_hits_are_counted(random_clip):
    scorer = ClipScorer(*random_clip)
    a, b = picture("navy"), picture("orange")
    scorer.embed([a])
    assert (scorer.cache_hits, scorer.cache_misses) == (0, 1)
    scorer.embed([a.copy(), b])
    assert (scorer.cache_hits, scorer.cache_misses) == (1, 2)
    scorer.similarities([(a, b), (b, b)])
    assert (scorer.cache_hits, scorer.cache_misses) == (5, 2)


def test_cache_is_bounded(random_clip):
    scorer = ClipScorer(*random_clip, cache_size=2)
    images = [picture(colour) for colour in ("red", "green", "blue")]
    scorer.embed(images)
    scorer.embed(images[:1])  # evicted: embedded again
    assert scorer.cache_misses == 4


def test_image_keys_are_content_hashes():
    image = picture("navy", (10, 10))
    assert image_key(image) == image_key(image.copy()) != image_key(picture("navy"))
    assert image_key(png_bytes(image)) == image_key(png_bytes(image))


def test_missing_weights_raise_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ClipUnavailable) as error:
        load_clip(tmp_path / "absent.bin")
    message = str(error.value)
    assert "absent.bin" in message and clip.WEIGHTS_ENV in message and "--download" in message

    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ClipUnavailable, match="no CLIP checkpoint"):
        load_clip(empty)

    monkeypatch.setenv(clip.WEIGHTS_ENV, str(tmp_path / "also-absent.bin"))
    monkeypatch.setattr(clip, "_default", None)
    scorer, reason = default_scorer()
    assert scorer is None and "also-absent.bin" in reason


def test_corrupt_checkpoint_is_reported_not_loaded(tmp_path):
    bad = tmp_path / "open_clip_pytorch_model.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipUnavailable, match="could not load CLIP weights"):
        load_clip(bad)


def test_checkpoint_from_file_folder_and_environment(random_clip, tmp_path, monkeypatch):
    model, _ = random_clip
    folder = tmp_path / "vit-b-32"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    reference_weight = model.visual.conv1.weight

    loaded, preprocess = load_clip(folder)
    assert torch.equal(loaded.visual.conv1.weight, reference_weight)
    assert not loaded.training

    monkeypatch.setenv(clip.WEIGHTS_ENV, str(folder / "open_clip_pytorch_model.bin"))
    from_env, _ = load_clip()
    assert torch.equal(from_env.visual.conv1.weight, reference_weight)
    image = picture("navy", (20, 30))
    assert ClipScorer(from_env, preprocess).similarity(image, image) == pytest.approx(1.0, abs=1e-5)
