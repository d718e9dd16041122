"""Tailwind v2's stylesheet cut down to the rules one page can use (:class:`TailwindSubset`).

The asset proxy serves each static page this subset instead of the whole 2.9 MB sheet: a rule
whose selectors all need a class that appears nowhere in the page can never match, so leaving it
out changes no pixel, and Chromium no longer parses and indexes 40,000 rules for every document
(about 90 ms of CPU per page on 2 cores). Below it, a small CSS tokenizer: top-level blocks, the
selectors of a list and the classes a selector needs.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

_CSS_CLASS = re.compile(r"\.((?:[\w-]|\\[0-9a-fA-F]{1,6}[ \t]?|\\[^0-9a-fA-F\n])+)")
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})[ \t]?|\\(.)")
_CSS_NOT = re.compile(r":not\([^()]*\)")
_CSS_ATTRIBUTE = re.compile(r"\[[^\]]*\]")
_CSS_ALTERNATIVES = (":is(", ":where(", ":has(", ":matches(", ":-webkit-any(")
_HTML_TOKEN_SEPARATORS = re.compile(r"[\s\"'<>=`(),;{}]+")
_CSS_SPECIAL = re.compile(r"[{}\"']|/\*")


def _css_blocks(css: str) -> list[tuple[str, str]]:
    """``(prelude, body)`` for each ``prelude{body}`` at the top level of ``css`` (comments
    dropped, strings and nested braces respected)."""
    blocks: list[tuple[str, str]] = []
    depth, prelude_start, body_start, pos = 0, 0, 0, 0
    comments: list[tuple[int, int]] = []  # spans to cut out of the current prelude
    while (match := _CSS_SPECIAL.search(css, pos)) is not None:
        token, at = match.group(), match.start()
        if token == "/*":
            close = css.find("*/", at + 2)
            pos = len(css) if close < 0 else close + 2
            if depth == 0:
                comments.append((at, pos))
        elif token in "\"'":
            close = at + 1
            while close < len(css) and css[close] != token:
                close += 2 if css[close] == "\\" else 1
            pos = close + 1
        elif token == "{":
            if depth == 0:
                body_start = at + 1
                prelude = css[prelude_start:at]
                for cut_start, cut_end in reversed(comments):
                    prelude = prelude[: cut_start - prelude_start] + prelude[cut_end - prelude_start :]
                comments = []
            depth += 1
            pos = at + 1
        else:  # "}"
            depth -= 1
            if depth == 0:
                blocks.append((prelude.strip(), css[body_start:at]))
                prelude_start = at + 1
            pos = at + 1
    return blocks


def _selector_classes(selector: str) -> frozenset[str] | None:
    """Classes an element tree needs for ``selector`` to match anything (lower-cased, since
    quirks-mode pages match classes case-insensitively); None when that cannot be told."""
    if any(alternative in selector for alternative in _CSS_ALTERNATIVES):
        return None
    selector = _CSS_ATTRIBUTE.sub("[]", _CSS_NOT.sub("", selector))
    return frozenset(
        _CSS_ESCAPE.sub(lambda m: chr(int(m[1], 16)) if m[1] else m[2], name).lower()
        for name in _CSS_CLASS.findall(selector)
    )


class TailwindSubset:
    """The Tailwind stylesheet cut down to the rules one page can use.

    A rule all of whose selectors need a class that appears nowhere in the page's HTML can never
    match, so leaving it out changes no pixel. Classes are looked for among every token of the
    HTML, scripts included (a superset of what ends up in the DOM). Rule order, ``@media``
    blocks and ``@keyframes`` are kept as they were.
    """

    def __init__(self, css: str) -> None:
        self._rules: list[tuple[int, str]] = []  # (media block number or -1, "selector{body}")
        self._media: list[str] = []  # media block number -> its prelude
        self._always: set[int] = set()  # rules kept for every page
        self._by_class: dict[str, list[tuple[int, frozenset[str]]]] = {}
        for prelude, body in _css_blocks(css):
            if prelude.startswith("@media"):
                self._media.append(prelude)
                for selector, rule_body in _css_blocks(body):
                    self._add(len(self._media) - 1, selector, rule_body)
            elif prelude.startswith("@"):  # @keyframes and other at-rules: always kept
                self._always.add(len(self._rules))
                self._rules.append((-1, f"{prelude}{{{body}}}"))
            else:
                self._add(-1, prelude, body)

    def _add(self, media: int, selector_list: str, body: str) -> None:
        index = len(self._rules)
        self._rules.append((media, f"{selector_list}{{{body}}}"))
        needs = [_selector_classes(selector) for selector in _split_selectors(selector_list)]
        if any(classes is None or not classes for classes in needs):
            self._always.add(index)
            return
        for classes in needs:
            self._by_class.setdefault(min(classes), []).append((index, classes))

    def __len__(self) -> int:
        return len(self._rules)

    def for_html(self, html: str) -> str:
        tokens = {token.lower() for token in _HTML_TOKEN_SEPARATORS.split(html) if token}
        keep = set(self._always)
        for token in tokens:
            for index, classes in self._by_class.get(token, ()):
                if classes <= tokens:
                    keep.add(index)
        out, open_media = [], -1
        for index in sorted(keep):
            media, rule = self._rules[index]
            if media != open_media:
                if open_media >= 0:
                    out.append("}")
                if media >= 0:
                    out.append(self._media[media] + "{")
                open_media = media
            out.append(rule)
        if open_media >= 0:
            out.append("}")
        return "".join(out)


def _split_selectors(selector_list: str) -> list[str]:
    """Split a selector list at its top-level commas."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(selector_list):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(selector_list[start:i])
            start = i + 1
    parts.append(selector_list[start:])
    return [part.strip() for part in parts if part.strip()]


_subset_lock = threading.Lock()


@lru_cache(maxsize=2)
def _load_subset_cached(path: Path, mtime_ns: int) -> TailwindSubset:
    return TailwindSubset(path.read_text(encoding="utf-8"))


def load_subset(path: Path) -> TailwindSubset:
    """The parsed stylesheet, built once per file version and shared by every renderer."""
    with _subset_lock:
        return _load_subset_cached(path, path.stat().st_mtime_ns)
