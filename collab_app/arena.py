"""The Compare tab's blind arena: the pair is drawn server-side from a pool of models.

When a person types both specs they know which two models they compare, and their votes say so;
chat arenas therefore pick the pair themselves. The pool is ``--arena-models SPEC,SPEC,...``, or
by default the model registry's versions plus the base. A draw weighs every pair of the pool by
``1 / (1 + its blind battles so far)`` so new models and rare pairs catch up. The names are
revealed only after the final vote; votes carry ``blind: true`` and the pair's ``specs``
(``collab_app.leaderboard`` rates blind votes only, by default).

A reply can still give its model away by naming it. Such a reply is shown as it is (hiding it
would change what the person judges) but the vote is marked ``identity_leak`` with the positions
that named themselves, so an analysis can leave those votes out.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

from simulators.store import SessionStore

# Words in model names that say nothing about which model it is.
GENERIC_NAME_WORDS = frozenset({"instruct", "chat", "model", "models", "base", "default", "registry", "current",
                                "tiny", "small", "large", "local", "adapter", "hf", "gguf", "dense", "it"})


def arena_pool(arena_models: str, base: str) -> list[str]:
    """The specs a blind pair is drawn from: ``arena_models`` (comma-separated), else the base and
    every registry version, each once."""
    if arena_models.strip():
        specs = [spec.strip() for spec in arena_models.split(",") if spec.strip()]
    else:
        from simulators.llm.registry import ModelRegistry, RegistryError

        try:
            versions = ModelRegistry().list_versions()
        except (RegistryError, OSError):
            versions = []
        specs = [base, *(f"registry:{v.id}" for v in versions)]
    return list(dict.fromkeys(specs))


def blind_battles(store: SessionStore) -> Counter:
    """How many blind comparisons each pair of specs has finished (one final vote each)."""
    return Counter(frozenset(v.specs) for v in store.votes() if v.final and v.blind and v.specs)


def draw_pair(pool: list[str], battles: Counter, rng: random.Random | None = None) -> tuple[str, str]:
    """Two different specs of ``pool``, pairs with few battles more likely."""
    pairs = list(itertools.combinations(pool, 2))
    if not pairs:
        raise ValueError("the arena needs at least two models in its pool")
    weights = [1.0 / (1 + battles[frozenset(pair)]) for pair in pairs]
    return (rng or random).choices(pairs, weights)[0]


def names_itself(reply: str, model_name: str) -> bool:
    """Whether ``reply`` names its model: a distinctive word of the model's name (its last path
    component, digits dropped: ``SmolLM2-135M-Instruct`` -> ``smollm``) appears in it."""
    last = re.split(r"[/\\:]", model_name.rstrip("/"))[-1].lower()
    words = {re.sub(r"\d+$", "", word) for word in re.split(r"[^a-z0-9]+", last)}
    distinctive = {w for w in words if len(w) >= 4 and not w[0].isdigit() and w not in GENERIC_NAME_WORDS}
    text = reply.lower()
    return any(word in text for word in distinctive)
