"""The differences between the agent's page and the target page, in words: what the text-only
simulated human reads instead of looking at the two screenshots (``simulators.humans``)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from simulators.render import PageSection, RenderResult, TextBlock
from simulators.scoring.colors import color_difference, describe_color
from simulators.scoring.design import PageGeometry, match_blocks

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
    ans, ref = PageGeometry.of(answer), PageGeometry.of(reference)
    matches = match_blocks(ans, ref)
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
