"""The model registry: versions of base + adapter, the current pointer, rollback, atomic writes."""

from __future__ import annotations

import json
import threading

import pytest

from simulators.llm import load_model
from simulators.llm.registry import ModelRegistry, RegistryError, resolve


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A real LoRA adapter on the tiny model, with non-zero weights so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def test_register_list_get_resolve_and_load_as_base_plus_adapter(tmp_path, adapter_dir, tiny_model_dir):
    registry = ModelRegistry(tmp_path / "registry")
    first = registry.register(adapter_dir, base=str(tiny_model_dir), algorithm="sweet-rl",
                              data={"path": "runs/r.jsonl", "hash": "abc", "count": 4}, config={"beta": 0.1},
                              metrics={"reward": 0.2})
    second = registry.register(adapter_dir, base=str(tiny_model_dir), parent=first.id, algorithm="rft", promoted=True)

    assert [v.id for v in registry.list_versions()] == ["v0001", "v0002"]
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["id"] == "v0001" and meta["parent"] is None and meta["data"]["count"] == 4
    assert meta["config"] == {"beta": 0.1} and meta["metrics"] == {"reward": 0.2} and meta["created"] > 0
    assert registry.get("v0002").parent == "v0001" and registry.get("v0002").meta["promoted"] is True
    assert registry.get("latest").id == "v0002"
    base, adapter = registry.resolve("v0002")
    assert base == str(tiny_model_dir) and (second.adapter_dir / "adapter_config.json").is_file()

    tuned, plain = load_model(base, adapter=adapter), load_model(base)
    prompt = plain.format_prompt([{"role": "user", "content": "Write a Python function that adds two numbers."}])
    assert tuned.completion_logprobs(prompt, "def add(a, b):") != pytest.approx(
        plain.completion_logprobs(prompt, "def add(a, b):"), abs=1e-3)


def test_current_pointer_set_and_rollback_with_history(tmp_path, adapter_dir):
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current() is None
    v1 = registry.register(adapter_dir, base="default", algorithm="sweet-rl")
    v2 = registry.register(adapter_dir, base="default", parent=v1.id, algorithm="sweet-rl")

    registry.set_current(v2.id)
    assert registry.current().id == "v0002" and registry.get("current").id == "v0002"
    assert registry.rollback().id == "v0001"  # default: the current version's parent
    assert registry.current().id == "v0001"
    registry.rollback("v0002")
    assert [(h["action"], h["version"], h["previous"]) for h in registry.history()] == [
        ("set", "v0002", None), ("rollback", "v0001", "v0002"), ("rollback", "v0002", "v0001")]
    registry.set_current(v1.id)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()  # v0001 has no parent
    with pytest.raises(RegistryError, match="no model version 'v0042'"):
        registry.set_current("v0042")
    assert registry.current().id == "v0001"  # a failed change leaves the pointer alone


def test_half_written_versions_are_never_listed_and_concurrent_registers_get_distinct_ids(tmp_path, adapter_dir):
    registry = ModelRegistry(tmp_path / "registry")
    partial = registry.versions_dir / ".partial-killed"  # a register killed before its rename
    (partial / "adapter").mkdir(parents=True)
    (partial / "meta.json").write_text("{}")
    (registry.versions_dir / "v0007").mkdir()  # a directory without meta.json is not a version
    assert registry.list_versions() == []

    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(registry.register(adapter_dir, base="default",
                                                                            algorithm="sweet-rl").id))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ids) == [v.id for v in registry.list_versions()] and len(set(ids)) == 4
    assert not any(p.name.startswith(".partial-") and p != partial for p in registry.versions_dir.iterdir())
    with pytest.raises(RegistryError, match="not a LoRA adapter"):
        registry.register(tmp_path, base="default", algorithm="sweet-rl")
    with pytest.raises(RegistryError, match="no model version"):
        registry.register(adapter_dir, base="default", parent="v0999", algorithm="sweet-rl")


def test_module_level_resolve_uses_the_registry_under_collab_home(tmp_path, adapter_dir, monkeypatch):
    monkeypatch.setenv("COLLAB_HOME", str(tmp_path / "home"))
    version = ModelRegistry().register(adapter_dir, base="default", algorithm="sweet-rl")
    assert version.path.parent == tmp_path / "home" / "models" / "registry" / "versions"
    assert resolve(version.id) == ("default", str(version.adapter_dir))


def test_the_one_registry_command_lists_promotes_shows_and_rolls_back(tmp_path, adapter_dir, monkeypatch, capsys):
    from collab_app.commands.models import main

    monkeypatch.setenv("COLLAB_HOME", str(tmp_path))
    registry = ModelRegistry()
    first = registry.register(adapter_dir, base="default", algorithm="sweet", metrics={})
    second = registry.register(adapter_dir, base="default", algorithm="rft", metrics={}, parent=first.id)
    assert main(["current"]) == 0 and capsys.readouterr().out.strip() == "the base model (no version promoted)"
    assert main(["promote", second.id]) == 0 and capsys.readouterr().out.strip() == f"serving {second.id}"
    assert main(["current", "--json"]) == 0 and json.loads(capsys.readouterr().out) == {"current": second.id}
    assert main(["list", "--json"]) == 0
    assert [(r["version"], r["current"]) for r in json.loads(capsys.readouterr().out)] == [(first.id, False),
                                                                                         (second.id, True)]
    assert main(["rollback"]) == 0 and capsys.readouterr().out.strip() == f"serving {first.id}"  # the parent
    assert main(["rollback", "base"]) == 0 and ModelRegistry().current() is None
    assert main(["promote", "v9999"]) == 2 and "error:" in capsys.readouterr().out
