"""Per-token log-probs of the scored positions of a batch (the vocabulary projection only where a
target is predicted, in chunks), the same without gradients with a shared opening forwarded once,
and the frozen reference's log-probs, computed once and cached on disk (π_ref of Eq. 2 and 4).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from simulators.llm.specs import weights_source
from training.models import unwrap
from training.sweet import token_logprobs

logger = logging.getLogger(__name__)


def collate(
    sequences: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], pad_id: int, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, target_mask); ``target_mask`` marks scored tokens."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    target_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (ids, target) in enumerate(zip(sequences, targets)):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        target_mask[row, : len(ids)] = torch.tensor(target, dtype=torch.bool)
    target_mask[:, 0] = False  # the first token has nothing to be predicted from
    return input_ids.to(device), attention_mask.to(device), target_mask.to(device)


def masked_token_logprobs(
    lm: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor,
    head_chunk: int = 512,
) -> torch.Tensor:
    """log π(x_i | x_<i) of every token with ``target_mask`` set, flat, in row-major order.

    The vocabulary projection runs only at the positions that predict a target token, so long
    contexts (c, the dialogue, the human's words) cost no vocabulary-sized logits, and it runs
    ``head_chunk`` positions at a time, recomputed in the backward pass: the [positions × vocab]
    logits, the largest tensors of a step, never exist for more than one chunk at once.
    """
    labels = input_ids[:, 1:][target_mask[:, 1:]]
    predicts_target = torch.zeros_like(target_mask)
    predicts_target[:, :-1] = target_mask[:, 1:]
    causal_lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # under a peft wrapper
    head = causal_lm.get_output_embeddings()
    if not _plain_linear_head(causal_lm, head):  # soft-capped or scaled logits: let the model compute them
        logits = lm(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=predicts_target,
                    use_cache=False).logits
        return token_logprobs(logits.reshape(-1, logits.shape[-1]), labels)
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state[predicts_target]
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for start in range(0, len(labels), head_chunk):
        args = (hidden[start:start + head_chunk], labels[start:start + head_chunk], head.weight, head.bias)
        pieces.append(checkpoint(_head_logprobs, *args, use_reentrant=False) if recompute else _head_logprobs(*args))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def _head_logprobs(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    return token_logprobs(F.linear(hidden, weight, bias), labels)


def _plain_linear_head(causal_lm: torch.nn.Module, head: torch.nn.Module | None) -> bool:
    config = causal_lm.config
    scaled = any(getattr(config, name, None) not in (None, 1, 1.0)
                 for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return isinstance(head, torch.nn.Linear) and hasattr(causal_lm, "get_decoder") and not scaled


SHARED_PREFIX_MIN_TOKENS = 64  # below this, forwarding an opening once is not worth a second pass


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``sequences`` share."""
    first, length = sequences[0], min(len(s) for s in sequences)
    for other in sequences[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return length


@torch.no_grad()
def shared_prefix_logprobs(
    lm: torch.nn.Module, sequences: Sequence[Sequence[int]], targets: Sequence[Sequence[bool]], pad_id: int,
    device: torch.device, chunk_size: int = 4,
) -> list[torch.Tensor]:
    """``masked_token_logprobs`` of several sequences (no gradients), their common opening forwarded once.

    The trajectories of one task open alike (c, the system prompt, the problem statement), and so
    do the candidate actions of one turn (c and o_t): that opening is run once and its key/value
    cache is shared by the rest of every sequence, ``chunk_size`` sequences at a time (the logits
    of a chunk's scored positions are the largest tensors here). Returns one tensor per sequence:
    the log-probs of its scored tokens, in order (token 0 is never scored: nothing predicts it).
    """
    scored = [[i for i, t in enumerate(target) if t and i > 0] for target in targets]
    common = min(common_prefix_length(sequences), min(len(s) for s in sequences) - 1)
    if len(sequences) < 2 or common < SHARED_PREFIX_MIN_TOKENS:
        flat = torch.cat([masked_token_logprobs(lm, *collate(sequences[i:i + chunk_size], targets[i:i + chunk_size],
                                                             pad_id, device))
                          for i in range(0, len(sequences), chunk_size)])
        return list(torch.split(flat, [len(indices) for indices in scored]))
    # The opening: logits at the positions p < common that predict a scored token p + 1 of some sequence.
    positions = sorted({i - 1 for indices in scored for i in indices if i - 1 < common})
    keep = torch.zeros(1, common, dtype=torch.bool, device=device)
    keep[0, positions] = True
    opening = lm(input_ids=torch.tensor([list(sequences[0][:common])], device=device), use_cache=True,
                 logits_to_keep=keep)
    opening_logits = opening.logits
    opening_logp = torch.log_softmax(opening_logits.reshape(-1, opening_logits.shape[-1]).float(), dim=-1)
    row_of = {p: r for r, p in enumerate(positions)}
    pieces = []
    for start in range(0, len(sequences), chunk_size):
        chunk = range(start, min(start + chunk_size, len(sequences)))
        # The rest of each sequence, batched after a copy of the opening's cache.
        cache = copy.deepcopy(opening.cache) if len(sequences) > chunk_size else opening.cache
        cache.batch_repeat_interleave(len(chunk))
        wanted = [set(scored[b]) for b in chunk]
        rest_targets = [[i + 1 in w for i in range(common, len(sequences[b]))] for b, w in zip(chunk, wanted)]
        ids, mask, predicts = collate([list(sequences[b][common:]) for b in chunk], rest_targets, pad_id, device)
        # (collate never keeps a sequence's first position; here the first position has a past)
        predicts[:, 0] = torch.tensor([t[0] for t in rest_targets], dtype=torch.bool, device=device)
        attention = torch.cat([torch.ones(len(chunk), common, dtype=mask.dtype, device=device), mask], dim=1)
        logits = lm(input_ids=ids, attention_mask=attention, cache=cache, logits_to_keep=predicts).logits
        rest_logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
        row = 0
        for b in chunk:
            values = []
            for i in scored[b]:
                if i - 1 < common:
                    values.append(opening_logp[row_of[i - 1], sequences[b][i]])
                else:
                    values.append(rest_logp[row, sequences[b][i]])
                    row += 1
            pieces.append(torch.stack(values) if values else rest_logp.new_zeros(0))
    return pieces


class TokenScorer(torch.nn.Module):
    """What a trainer optimises (and ``accelerate`` wraps): a LoRA causal LM whose forward gives
    log π(x_i | x_<i) at the target positions (see ``masked_token_logprobs``)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        return masked_token_logprobs(self.lm, input_ids, attention_mask, target_mask)


# -- the frozen reference --------------------------------------------------------------------------


def sequence_key(input_ids: Sequence[int], target: Sequence[bool | int]) -> str:
    """A hash naming a sequence and which of its tokens are scored (the reference cache's key)."""
    return hashlib.sha1(repr((list(input_ids), list(target))).encode()).hexdigest()


def reference_model_id(spec: str, lm: torch.nn.Module, *, adapter_disabled: bool) -> str:
    """Names π_ref for the reference cache: the base weights (the critic: adapter disabled), plus
    the adapter the model was loaded with otherwise (the actor's parent version), and the dtype.

    Each directory is named by its path and the size and modification time of its files, so
    other weights at the same path count as another model."""
    source, adapter = weights_source(spec)
    parts = [_directory_fingerprint(source)]
    if adapter is not None and not adapter_disabled:
        parts.append(_directory_fingerprint(adapter))
    return " + ".join(parts) + f" ({unwrap(lm).dtype})"


def _directory_fingerprint(path: str) -> str:
    directory = Path(path)
    if not directory.is_dir():
        return path  # a hub id
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in directory.iterdir() if f.is_file())
    return f"{directory.resolve()}@{hashlib.sha1(repr(files).encode()).hexdigest()[:12]}"


class ReferenceLogprobs:
    """log π_ref of the scored tokens of each sequence, computed once and kept (keyed by a hash
    of the sequence); saved next to checkpoints so a resumed run does not recompute them.

    A saved table belongs to the model named ``model_id`` (``reference_model_id``): a run resumed
    in the same directory on another model (another base, another parent version) computes its
    own instead of reusing values of the wrong π_ref.
    """

    def __init__(self, path: Path | None = None, *, model_id: str = ""):
        if path is not None and not model_id:
            raise ValueError("a saved reference cache needs the model_id of π_ref (reference_model_id)")
        self.path = path
        self.model_id = model_id
        self.table: dict[str, torch.Tensor] = {}
        if path is not None and path.is_file():
            saved = torch.load(path)
            if isinstance(saved, dict) and saved.get("model") == model_id:
                self.table = saved["logprobs"]
            else:
                logger.info("%s holds the reference log-probs of another model; computing them for %s",
                            path, model_id)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.table[key]

    def __contains__(self, key: str) -> bool:
        return key in self.table

    @torch.no_grad()
    def fill(
        self, model: torch.nn.Module, items: Sequence[tuple[str, list[int], list[bool]]], *, pad_id: int,
        disable_adapter: bool, batch_size: int = 4, progress: bool = True,
    ) -> None:
        """Compute the missing entries; ``items`` are (key, input ids, target mask).

        ``disable_adapter``: π_ref is the base model (the critic's reference). Otherwise π_ref is
        the model as it is now, before training (the actor's reference: the parent policy).
        """
        todo = list({key: (key, ids, target) for key, ids, target in items if key not in self.table}.values())
        if not todo:
            return
        todo.sort(key=lambda item: item[1])  # sequences that open alike (one task's trajectories) side by side
        peft_model = unwrap(model)
        was_training = peft_model.training
        peft_model.eval()
        device = next(peft_model.parameters()).device
        reference = peft_model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with reference:
            for chunk in tqdm(_prefix_chunks(todo, batch_size), desc="reference log-probs", disable=not progress):
                values = shared_prefix_logprobs(peft_model, [ids for _, ids, _ in chunk], [t for _, _, t in chunk],
                                                pad_id, device)
                for (key, _, _), logp in zip(chunk, values):
                    self.table[key] = logp.cpu().clone()
        peft_model.train(was_training)
        if self.path is not None:  # temp file + rename: processes of one run may save at the same time
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            torch.save({"model": self.model_id, "logprobs": self.table}, tmp)
            os.replace(tmp, self.path)


def _prefix_chunks(items: list, batch_size: int) -> list[list]:
    """Consecutive items (sorted by token ids) in chunks of at most ``batch_size``; a chunk also ends
    where the next item would leave it less than ``SHARED_PREFIX_MIN_TOKENS`` common opening tokens."""
    chunks: list[list] = []
    for item in items:
        chunk = chunks[-1] if chunks else None
        # Sorted, so the opening a chunk shares is the one its first and last items share.
        if chunk is None or len(chunk) == batch_size or \
                common_prefix_length([chunk[0][1], item[1]]) < SHARED_PREFIX_MIN_TOKENS:
            chunks.append([item])
        else:
            chunk.append(item)
    return chunks
