"""Design metrics of a rendered page against the reference, after Design2Code (Si et al. 2024).

Computed from the DOM text blocks that the renderer reads in the same page visit (no OCR, no
learned weights):

* blocks are matched one-to-one by text similarity (difflib ratio) with a minimum-cost
  assignment (Hungarian algorithm, scipy's), ties broken by distance; pairs with
  similarity below 0.5 are dropped, as in Design2Code;
* ``block_match``: matched area / total area of all blocks of both pages (areas as fractions of
  each page), so missing and extra text both cost;
* ``text``: mean similarity of the matched pairs;
* ``position``: mean of 1 - max(|dx|, |dy|) between matched block centres, in page fractions;
* ``color``: mean of 1 - CIEDE2000/100 between matched text colours;
* ``design`` (overall): the mean of the four. Two pages without any text score 1.0; a page
  without text against one with text scores 0.

Identical pages score 1.0 on every metric.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from simulators.render import RenderResult, TextBlock
from simulators.scoring.colors import color_similarity

MIN_MATCH_SIMILARITY = 0.5  # Design2Code drops matched pairs below this text similarity


def min_cost_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one assignment of rows to columns (rectangular allowed), as sorted
    (row, column) pairs: scipy's Hungarian algorithm (``linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, dtype=np.float64)
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return sorted(zip(rows.tolist(), cols.tolist()))


def text_similarity(a: str, b: str) -> float:
    """Character-level similarity in [0, 1] (difflib's ratio, as Design2Code uses)."""
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b).ratio()


@dataclass
class PageGeometry:
    """Blocks of one render with positions as fractions of that page's screenshot."""

    blocks: list[TextBlock]
    boxes: np.ndarray  # (n, 4): x, y, w, h in page fractions

    @classmethod
    def of(cls, render: RenderResult) -> PageGeometry:
        width, height = max(render.width, 1), max(render.height, 1)
        blocks = [b for b in render.blocks if b.y < height and b.x < width]  # below a capped screenshot: unseen
        boxes = np.array([[b.x / width, b.y / height, b.width / width, b.height / height] for b in blocks]).reshape(-1, 4)
        return cls(blocks, boxes)

    @property
    def centers(self) -> np.ndarray:
        return self.boxes[:, :2] + self.boxes[:, 2:] / 2

    @property
    def areas(self) -> np.ndarray:
        return self.boxes[:, 2] * self.boxes[:, 3]


@dataclass
class BlockMatch:
    answer: int  # index into the answer page's blocks
    reference: int
    text_similarity: float


def match_blocks(answer: PageGeometry, reference: PageGeometry) -> list[BlockMatch]:
    n, m = len(answer.blocks), len(reference.blocks)
    if not n or not m:
        return []
    similarity = np.zeros((n, m))
    matcher = difflib.SequenceMatcher(None)
    for j, r in enumerate(reference.blocks):
        matcher.set_seq2(r.text)  # difflib indexes the second sequence: once per reference block
        for i, a in enumerate(answer.blocks):
            if a.text == r.text:
                similarity[i, j] = 1.0
                continue
            matcher.set_seq1(a.text)
            # The quick ratios bound ratio() from above: pairs that cannot reach the cut-off stay 0.
            if matcher.real_quick_ratio() >= MIN_MATCH_SIMILARITY and matcher.quick_ratio() >= MIN_MATCH_SIMILARITY:
                similarity[i, j] = matcher.ratio()
    # Among equally similar candidates (repeated labels such as "Learn more") prefer the nearest.
    distance = np.abs(answer.centers[:, None, :] - reference.centers[None, :, :]).max(axis=2)
    pairs = min_cost_assignment(-similarity + 1e-3 * distance)
    return [BlockMatch(i, j, float(similarity[i, j])) for i, j in pairs if similarity[i, j] >= MIN_MATCH_SIMILARITY]


@dataclass
class DesignScores:
    """Design2Code-style fine-grained scores, each in [0, 1]."""

    block_match: float
    text: float
    position: float
    color: float
    matched_blocks: int = 0
    answer_blocks: int = 0
    reference_blocks: int = 0

    @property
    def overall(self) -> float:
        return (self.block_match + self.text + self.position + self.color) / 4

    def as_scores(self) -> dict[str, float]:
        return {
            "design": self.overall,
            "design_block_match": self.block_match,
            "design_text": self.text,
            "design_position": self.position,
            "design_color": self.color,
        }

    @classmethod
    def zero(cls, reference_blocks: int = 0) -> DesignScores:
        return cls(0.0, 0.0, 0.0, 0.0, reference_blocks=reference_blocks)


def design_scores(answer: RenderResult | None, reference: RenderResult) -> DesignScores:
    """Compare two renders; a missing or failed answer render scores 0 on everything."""
    if not reference.ok:
        raise ValueError(f"the reference did not render: {reference.error}")
    ref = PageGeometry.of(reference)
    if answer is None or not answer.ok:
        return DesignScores.zero(len(ref.blocks))
    ans = PageGeometry.of(answer)
    if not ans.blocks and not ref.blocks:  # nothing to mismatch
        return DesignScores(1.0, 1.0, 1.0, 1.0)
    matches = match_blocks(ans, ref)
    if not matches:
        return DesignScores(0.0, 0.0, 0.0, 0.0, 0, len(ans.blocks), len(ref.blocks))
    a_idx = np.array([m.answer for m in matches])
    r_idx = np.array([m.reference for m in matches])
    total_area = ans.areas.sum() + ref.areas.sum()
    matched_area = ans.areas[a_idx].sum() + ref.areas[r_idx].sum()
    shifts = np.abs(ans.centers[a_idx] - ref.centers[r_idx]).max(axis=1)
    colors = [color_similarity(ans.blocks[m.answer].color, ref.blocks[m.reference].color) for m in matches]
    return DesignScores(
        block_match=float(matched_area / total_area) if total_area > 0 else 1.0,
        text=float(np.mean([m.text_similarity for m in matches])),
        position=float(np.clip(1.0 - shifts, 0.0, 1.0).mean()),
        color=float(np.mean(colors)),
        matched_blocks=len(matches),
        answer_blocks=len(ans.blocks),
        reference_blocks=len(ref.blocks),
    )
