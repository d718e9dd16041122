"""Frontend scoring: HTML extraction, design metrics, CLIP reward and a plain-English diff.

Reward (as in ColBench): the CLIP cosine similarity between screenshots of the agent's page and
the reference page when real CLIP weights are present (``simulators.clip_score``), else the
design score below. An answer with no ``<html>``/``<body>`` block, or one that fails to render,
is scored as ColBench does: a black image for CLIP and 0 for every design metric.

Design metrics follow Design2Code (Si et al. 2024), computed from the DOM text blocks that the
renderer reads in the same page visit (no OCR, no learned weights):

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
import hashlib
import logging
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simulators.domain import Episode, Task
from simulators.render import PageSection, Renderer, RenderResult, TextBlock, shared_renderer
from simulators.scoring import TaskCheck

log = logging.getLogger(__name__)

MIN_MATCH_SIMILARITY = 0.5  # Design2Code drops matched pairs below this text similarity
FRONTEND_SCORE_KEYS = (
    "clip",
    "clip_unavailable",
    "design",
    "design_block_match",
    "design_text",
    "design_position",
    "design_color",
    "render_error",
    "reference_render_error",
)
NO_HTML_ERROR = "the answer contains no <html>...</html> or <body>...</body> block"
CHECK_CHUNK = 32  # references rendered per batch in check_tasks (bounds memory on 600 tasks)

# ---------------------------------------------------------------------------------------------
# HTML extraction (ColBench's extract_html_snippet, made case-insensitive)

_HTML_BLOCK = re.compile(r"<html\b[^>]*>.*?</html\s*>", re.IGNORECASE | re.DOTALL)
_BODY_BLOCK = re.compile(r"<body\b[^>]*>.*?</body\s*>", re.IGNORECASE | re.DOTALL)
_UNSPLASH_RANDOM = re.compile(r"https://source\.unsplash\.com/random/(\d+)x(\d+)/\?[\w=]+")
_PICSUM_NO_ID = re.compile(r"https://picsum\.photos/(\d+)/(\d+)")


def extract_html(message: str | None) -> str | None:
    """The page in an agent message: the first ``<html ...>...</html>`` block, else the first
    ``<body ...>...</body>`` block, else None.

    Like ColBench, random-image URLs are first pinned to the picture every reference uses
    (``source.unsplash.com/random/WxH`` and ``picsum.photos/W/H`` become
    ``picsum.photos/id/48/W/H``). ColBench matches case-sensitively; we also accept ``<HTML>``.
    """
    if not message:
        return None
    message = _UNSPLASH_RANDOM.sub(r"https://picsum.photos/id/48/\1/\2", message)
    message = _PICSUM_NO_ID.sub(r"https://picsum.photos/id/48/\1/\2", message)
    match = _HTML_BLOCK.search(message) or _BODY_BLOCK.search(message)
    return match.group(0) if match else None


# ---------------------------------------------------------------------------------------------
# Colour science


def srgb_to_lab(rgb: Sequence[float]) -> tuple[float, float, float]:
    """CIE L*a*b* (D65 white, sRGB's own) of an 8-bit sRGB colour."""

    def linear(channel: float) -> float:
        c = channel / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def ciede2000(lab1: Sequence[float], lab2: Sequence[float]) -> float:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), with kL = kC = kH = 1."""
    l1, a1, b1 = lab1
    l2, a2, b2 = lab2
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if (a1p or b1) else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if (a2p or b2) else 0.0

    delta_l = l2 - l1
    delta_c = c2p - c1p
    if c1p * c2p == 0:
        delta_h_angle = 0.0
    else:
        delta_h_angle = h2p - h1p
        if delta_h_angle > 180:
            delta_h_angle -= 360
        elif delta_h_angle < -180:
            delta_h_angle += 360
    delta_h = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(delta_h_angle / 2))

    l_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_mean = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_mean = (h1p + h2p) / 2
    elif h1p + h2p < 360:
        h_mean = (h1p + h2p + 360) / 2
    else:
        h_mean = (h1p + h2p - 360) / 2

    t = (
        1
        - 0.17 * math.cos(math.radians(h_mean - 30))
        + 0.24 * math.cos(math.radians(2 * h_mean))
        + 0.32 * math.cos(math.radians(3 * h_mean + 6))
        - 0.20 * math.cos(math.radians(4 * h_mean - 63))
    )
    delta_theta = 30 * math.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * math.sqrt(cp_mean**7 / (cp_mean**7 + 25**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -math.sin(math.radians(2 * delta_theta)) * r_c
    dl, dc, dh = delta_l / s_l, delta_c / s_c, delta_h / s_h
    return math.sqrt(max(0.0, dl * dl + dc * dc + dh * dh + r_t * dc * dh))


def color_difference(rgb1: Sequence[int], rgb2: Sequence[int]) -> float:
    """CIEDE2000 between two 8-bit sRGB colours."""
    return ciede2000(srgb_to_lab(rgb1), srgb_to_lab(rgb2))


def color_similarity(rgb1: Sequence[int], rgb2: Sequence[int]) -> float:
    """Design2Code's text-colour score: 1 - CIEDE2000/100, floored at 0."""
    return max(0.0, 1.0 - color_difference(rgb1, rgb2) / 100.0)


_COLOR_NAMES = {
    "white": (255, 255, 255),
    "light gray": (229, 231, 235),
    "gray": (156, 163, 175),
    "dark gray": (75, 85, 99),
    "near-black": (31, 41, 55),
    "black": (0, 0, 0),
    "red": (239, 68, 68),
    "dark red": (153, 27, 27),
    "light red": (254, 202, 202),
    "orange": (249, 115, 22),
    "yellow": (250, 204, 21),
    "light yellow": (254, 243, 199),
    "green": (34, 197, 94),
    "dark green": (22, 101, 52),
    "light green": (209, 250, 229),
    "teal": (20, 184, 166),
    "light blue": (191, 219, 254),
    "blue": (59, 130, 246),
    "dark blue": (30, 58, 138),
    "indigo": (99, 102, 241),
    "purple": (147, 51, 234),
    "light purple": (233, 213, 255),
    "pink": (236, 72, 153),
    "light pink": (252, 231, 243),
    "brown": (120, 72, 40),
    "beige": (245, 235, 210),
}
_COLOR_NAME_LABS = {name: srgb_to_lab(rgb) for name, rgb in _COLOR_NAMES.items()}


def describe_color(rgb: Sequence[int]) -> str:
    """E.g. 'dark blue (#1e3a8a)': the nearest everyday colour name plus the exact hex."""
    lab = srgb_to_lab(rgb)
    name = min(_COLOR_NAME_LABS, key=lambda n: ciede2000(lab, _COLOR_NAME_LABS[n]))
    return f"{name} (#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x})"


# ---------------------------------------------------------------------------------------------
# Block matching


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
class _PageGeometry:
    """Blocks of one render with positions as fractions of that page's screenshot."""

    blocks: list[TextBlock]
    boxes: np.ndarray  # (n, 4): x, y, w, h in page fractions

    @classmethod
    def of(cls, render: RenderResult) -> _PageGeometry:
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


def _match(answer: _PageGeometry, reference: _PageGeometry) -> list[BlockMatch]:
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
    ref = _PageGeometry.of(reference)
    if answer is None or not answer.ok:
        return DesignScores.zero(len(ref.blocks))
    ans = _PageGeometry.of(answer)
    if not ans.blocks and not ref.blocks:  # nothing to mismatch
        return DesignScores(1.0, 1.0, 1.0, 1.0)
    matches = _match(ans, ref)
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


# ---------------------------------------------------------------------------------------------
# Differences in words, for the text-only simulated human

LANDMARKS = ("header", "nav", "main", "section", "article", "aside", "form", "footer")
MAX_FACTS = 15
COLOR_FACT_DELTA = 10.0  # CIEDE2000 above which two colours read as different to a person


def _quote(text: str, limit: int = 60) -> str:
    text = text.strip()
    return f'"{text if len(text) <= limit else text[: limit - 1] + "…"}"'


def _region(cx: float, cy: float) -> str:
    vertical = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    horizontal = "left" if cx < 1 / 3 else "center" if cx < 2 / 3 else "right"
    return "center" if (vertical, horizontal) == ("middle", "center") else f"{vertical} {horizontal}"


def _side_by_side(a: TextBlock, b: TextBlock) -> bool | None:
    """True: same row; False: stacked; None: neither clearly (overlapping boxes)."""
    vertical_overlap = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    horizontal_gap = max(a.x, b.x) - min(a.x + a.width, b.x + b.width)
    if vertical_overlap > 0.5 * min(a.height, b.height) and horizontal_gap > 0:
        return True
    if vertical_overlap <= 0:
        return False
    return None


def _section_facts(answer: RenderResult, reference: RenderResult, known_backgrounds: set[tuple[str, str]]) -> list[str]:
    """Facts about landmark sections; background swaps reported go into ``known_backgrounds``."""
    facts = []
    by_tag_ref: dict[str, list[PageSection]] = {}
    by_tag_ans: dict[str, list[PageSection]] = {}
    for section in reference.sections:
        by_tag_ref.setdefault(section.tag, []).append(section)
    for section in answer.sections:
        by_tag_ans.setdefault(section.tag, []).append(section)
    for tag in LANDMARKS:
        want, have = by_tag_ref.get(tag, []), by_tag_ans.get(tag, [])
        if want and not have:
            facts.append(f"The target has a <{tag}> ({_quote(want[0].text, 40) if want[0].text else 'no text'}); the current page has none.")
        elif have and not want:
            facts.append(f"The current page has a <{tag}> that the target does not have.")
        elif len(want) != len(have):
            facts.append(f"The target has {len(want)} <{tag}> elements, the current page {len(have)}.")
        for w, h in zip(want, have):
            if color_difference(w.background, h.background) > COLOR_FACT_DELTA:
                swap = (describe_color(w.background), describe_color(h.background))
                known_backgrounds.add(swap)
                facts.append(f"The <{tag}> background is {swap[0]} in the target but {swap[1]} in the current page.")
            if max(w.height, h.height) > 1.5 * max(min(w.height, h.height), 1) and abs(w.height - h.height) > 60:
                size = "taller" if w.height > h.height else "shorter"
                facts.append(f"The <{tag}> is {size} in the target ({w.height:.0f} px vs {h.height:.0f} px).")
    order_ref = [s.tag for s in sorted(reference.sections, key=lambda s: s.y) if s.tag in LANDMARKS and s.depth == 0]
    order_ans = [s.tag for s in sorted(answer.sections, key=lambda s: s.y) if s.tag in LANDMARKS and s.depth == 0]
    if Counter(order_ref) == Counter(order_ans) and order_ref != order_ans:
        facts.append(f"Top-level order differs: target {', '.join(order_ref)}; current page {', '.join(order_ans)}.")
    return facts


def _image_facts(answer: RenderResult, reference: RenderResult) -> list[str]:
    facts = []
    want = [i for i in reference.images if i.tag in ("img", "video", "picture", "canvas", "iframe")]
    have = [i for i in answer.images if i.tag in ("img", "video", "picture", "canvas", "iframe")]
    if len(want) != len(have):
        facts.append(f"The target shows {len(want)} image{'' if len(want) == 1 else 's'}; the current page shows {len(have)}.")
    big_want = [i for i in want if i.width >= 0.6 * reference.width and i.height >= 200]
    big_have = [i for i in have if i.width >= 0.6 * answer.width and i.height >= 200]
    if big_want and not big_have:
        top = big_want[0]
        facts.append(
            f"The target has a large, nearly full-width image ({top.width:.0f}x{top.height:.0f} px) "
            f"at the {_region(0.5, (top.y + top.height / 2) / max(reference.height, 1)).split()[0]}; "
            "the current page has no image that big."
        )
    elif big_have and not big_want:
        facts.append("The current page has a large, nearly full-width image that the target does not have.")
    return facts


def _labels(texts: list[str], limit: int = 3) -> str:
    unique = list(dict.fromkeys(texts))
    shown = ", ".join(_quote(text, 40) for text in unique[:limit])
    return shown + (f" (and {len(unique) - limit} more)" if len(unique) > limit else "")


def _text_facts(answer: RenderResult, reference: RenderResult, known_backgrounds: set[tuple[str, str]]) -> list[str]:
    """Facts about the text blocks. Changes shared by many blocks (one colour swapped for
    another) are reported once; ``known_backgrounds`` holds colour swaps already reported for
    sections, which are not repeated per text."""
    ans, ref = _PageGeometry.of(answer), _PageGeometry.of(reference)
    matches = _match(ans, ref)
    matched_ref = {m.reference for m in matches}
    matched_ans = {m.answer for m in matches}
    facts: list[str] = []

    missing = sorted((b for j, b in enumerate(ref.blocks) if j not in matched_ref), key=lambda b: (-b.font_size, b.y))
    if missing:
        facts.append(f"Text in the target that the current page lacks: {_labels([b.text for b in missing], 5)}.")

    layout: list[tuple[float, str]] = []
    for x, m1 in enumerate(matches):
        for m2 in matches[x + 1 :]:
            want = _side_by_side(ref.blocks[m1.reference], ref.blocks[m2.reference])
            have = _side_by_side(ans.blocks[m1.answer], ans.blocks[m2.answer])
            if want is None or have is None or want == have:
                continue
            pair = f"{_quote(ref.blocks[m1.reference].text, 30)} and {_quote(ref.blocks[m2.reference].text, 30)}"
            weight = ref.blocks[m1.reference].font_size + ref.blocks[m2.reference].font_size
            if want:
                layout.append((weight, f"{pair} sit side by side in the target but are stacked in the current page."))
            else:
                layout.append((weight, f"{pair} are stacked in the target but side by side in the current page."))
    facts.extend(text for _, text in sorted(layout, key=lambda item: -item[0])[:2])

    edits, sizes, positions = [], [], []
    recolored: dict[tuple[str, str], list[str]] = {}
    backgrounds: dict[tuple[str, str], list[str]] = {}
    weights: dict[bool, list[str]] = {}
    for m in sorted(matches, key=lambda m: -ref.blocks[m.reference].font_size):
        want, have = ref.blocks[m.reference], ans.blocks[m.answer]
        label = _quote(want.text, 40)
        if m.text_similarity < 0.98:
            edits.append(f"{_quote(have.text, 60)} should read {_quote(want.text, 60)}.")
        if color_difference(want.color, have.color) > COLOR_FACT_DELTA:
            recolored.setdefault((describe_color(want.color), describe_color(have.color)), []).append(want.text)
        if color_difference(want.background, have.background) > COLOR_FACT_DELTA:
            swap = (describe_color(want.background), describe_color(have.background))
            if swap not in known_backgrounds:
                backgrounds.setdefault(swap, []).append(want.text)
        if max(want.font_size, have.font_size) >= 1.2 * min(want.font_size, have.font_size):
            size = "larger" if want.font_size > have.font_size else "smaller"
            sizes.append(f"Text {label} is {size} in the target ({want.font_size:.0f} px vs {have.font_size:.0f} px).")
        if (want.font_weight >= 600) != (have.font_weight >= 600):
            weights.setdefault(want.font_weight >= 600, []).append(want.text)
        want_center, have_center = ref.centers[m.reference], ans.centers[m.answer]
        where_want, where_have = _region(*want_center), _region(*have_center)
        if where_want != where_have and np.abs(want_center - have_center).max() > 0.15:
            positions.append(f"Text {label} is at the {where_want} of the target page but at the {where_have} of the current page.")

    facts.extend(edits[:4])
    for (want_color, have_color), texts in recolored.items():
        facts.append(f"Text {_labels(texts)} is {want_color} in the target but {have_color} in the current page.")
    for (want_color, have_color), texts in backgrounds.items():
        facts.append(f"Text {_labels(texts)} sits on {want_color} in the target, on {have_color} in the current page.")
    facts.extend(sizes[:3])
    for bold, texts in weights.items():
        facts.append(f"Text {_labels(texts)} is {'bold' if bold else 'not bold'} in the target.")
    facts.extend(positions[:3])

    extra = sorted((b for i, b in enumerate(ans.blocks) if i not in matched_ans), key=lambda b: (-b.font_size, b.y))
    if extra:
        facts.append(f"Text in the current page that the target does not have: {_labels([b.text for b in extra])}.")
    return facts


def describe_differences(answer_render: RenderResult | None, reference_render: RenderResult) -> list[str]:
    """The differences that matter between the agent's page and the target page, as short
    plain-English facts (most important first, at most ``MAX_FACTS``), computed from the two DOM
    extractions. An empty list means no visible difference was found."""
    if not reference_render.ok:
        return [f"The target page itself could not be rendered ({reference_render.error})."]
    if answer_render is None:
        return ["The agent has not shown a page yet (no <html> or <body> block in its message)."]
    if not answer_render.ok:
        return [f"The agent's page could not be rendered: {answer_render.error}."]
    facts: list[str] = []
    known_backgrounds: set[tuple[str, str]] = set()
    if color_difference(answer_render.background, reference_render.background) > COLOR_FACT_DELTA:
        swap = (describe_color(reference_render.background), describe_color(answer_render.background))
        known_backgrounds.add(swap)
        facts.append(f"The page background is {swap[0]} in the target but {swap[1]} in the current page.")
    want_h, have_h = reference_render.page_height, answer_render.page_height
    if max(want_h, have_h) > 1.3 * max(min(want_h, have_h), 1) and abs(want_h - have_h) > 200:
        size = "longer" if want_h > have_h else "shorter"
        facts.append(f"The target page is much {size} than the current page ({want_h:,} px vs {have_h:,} px tall).")
    facts.extend(_section_facts(answer_render, reference_render, known_backgrounds))
    facts.extend(_image_facts(answer_render, reference_render))
    facts.extend(_text_facts(answer_render, reference_render, known_backgrounds))
    return facts[:MAX_FACTS]


# ---------------------------------------------------------------------------------------------
# Scoring episodes and checking tasks


class _ReferenceCache:
    """Reference renders by (task id, sha256 of the reference HTML); only successes are kept."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], RenderResult] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(task: Task) -> tuple[str, str]:
        return task.id, hashlib.sha256(task.ground_truth.encode("utf-8", errors="replace")).hexdigest()

    def renders(self, tasks: Sequence[Task], renderer: Renderer) -> list[RenderResult]:
        keys = [self.key(task) for task in tasks]
        with self._lock:
            found = {key: self._items[key] for key in keys if key in self._items}
            for key in found:
                self._items.move_to_end(key)
        todo = {key: task.ground_truth for key, task in zip(keys, tasks) if key not in found}
        for key, result in zip(todo, renderer.render_many(list(todo.values()))):
            found[key] = result
            if result.ok:
                with self._lock:
                    self._items[key] = result
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)
        return [found[key] for key in keys]


reference_cache = _ReferenceCache()


def reference_render(task: Task, *, renderer: Renderer | None = None) -> RenderResult:
    """The render of a task's reference page, from the cache when it has been rendered before
    (the simulated human and the scorer both need it, every turn)."""
    return reference_cache.renders([task], renderer or shared_renderer())[0]


def _clip(scorer_and_reason: tuple | None):
    if scorer_and_reason is not None:
        return scorer_and_reason
    from simulators.clip_score import default_scorer

    return default_scorer()


def score_episodes(
    episodes: Sequence[Episode],
    *,
    renderer: Renderer | None = None,
    clip: tuple | None = None,
) -> None:
    """Render each episode's answer and its task's reference, and fill ``scores`` and ``reward``.

    ``clip`` is ``(ClipScorer | None, reason)``; by default the process-wide scorer (real
    weights only). Previous frontend score keys are replaced, other keys are kept.
    """
    if not episodes:
        return
    renderer = renderer or shared_renderer()
    scorer, clip_reason = _clip(clip)
    answers_html = [extract_html(episode.answer) for episode in episodes]
    references = reference_cache.renders([episode.task for episode in episodes], renderer)
    rendered = iter(renderer.render_many([html for html in answers_html if html is not None]))
    answers = [next(rendered) if html is not None else None for html in answers_html]

    clip_values: list[float | None] = [None] * len(episodes)
    if scorer is not None:
        black = Image.new("RGB", (224, 224), "black")  # ColBench's image for an answer that did not render
        pairs = [
            ((ans.png if ans is not None and ans.ok else black), ref.png)
            for ans, ref in zip(answers, references)
            if ref.ok
        ]
        values = iter(scorer.similarities(pairs))
        clip_values = [next(values) if ref.ok else 0.0 for ref in references]

    for episode, html, answer, reference, clip_value in zip(episodes, answers_html, answers, references, clip_values):
        scores: dict = {}
        if html is None:
            scores["render_error"] = NO_HTML_ERROR
        elif not answer.ok:
            scores["render_error"] = answer.error
        if reference.ok:
            scores.update(design_scores(answer, reference).as_scores())
        else:
            scores["reference_render_error"] = reference.error
            scores.update(DesignScores.zero().as_scores())
        if clip_value is not None:
            scores["clip"] = clip_value
        else:
            scores["clip_unavailable"] = clip_reason
        for key in FRONTEND_SCORE_KEYS:
            episode.scores.pop(key, None)
        episode.scores.update(scores)
        episode.reward = scores.get("clip", scores["design"])


def check_tasks(
    tasks: Sequence[Task],
    *,
    renderer: Renderer | None = None,
    clip: tuple | None = None,
) -> list[TaskCheck]:
    """Each reference must render and score 1.0 against itself on every design metric (and on
    CLIP when real weights are present). Results come back in the order of ``tasks``."""
    renderer = renderer or shared_renderer()
    scorer, _ = _clip(clip)
    checks: list[TaskCheck] = []
    for start in range(0, len(tasks), CHECK_CHUNK):
        chunk = list(tasks[start : start + CHECK_CHUNK])
        renders = renderer.render_many([task.ground_truth for task in chunk])
        self_clip: list[float | None] = [None] * len(chunk)
        if scorer is not None:
            ok_renders = [r for r in renders if r.ok]
            values = iter(scorer.similarities([(r.png, r.png) for r in ok_renders]))
            self_clip = [next(values) if r.ok else None for r in renders]
        for task, render, clip_value in zip(chunk, renders, self_clip):
            problems = []
            if not render.ok:
                problems.append(f"reference does not render: {render.error}")
            else:
                scores = design_scores(render, render).as_scores()
                problems += [f"{name} of the reference against itself is {value:.4f}, not 1.0" for name, value in scores.items() if abs(value - 1.0) > 1e-9]
                if clip_value is not None and clip_value < 0.9999:
                    problems.append(f"CLIP similarity of the reference with itself is {clip_value:.4f}, not 1.0")
            checks.append(TaskCheck(task_id=task.id, source=task.source, ok=not problems, problems=problems))
    return checks
