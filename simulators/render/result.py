"""What a render returns: :class:`RenderResult` with the page's text blocks, images and sections,
in CSS pixels of the page, as read by ``js/extract_dom.js`` in the same visit as the screenshot."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class TextBlock:
    """A run of visible text sharing one block-level container, in CSS pixels of the page."""

    text: str
    x: float
    y: float
    width: float
    height: float
    color: tuple[int, int, int]
    background: tuple[int, int, int]
    font_size: float
    font_weight: int
    tag: str

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2


@dataclass
class PageImage:
    """An image-like element (img, svg, video, iframe, canvas)."""

    tag: str
    x: float
    y: float
    width: float
    height: float
    src: str
    alt: str
    loaded: bool


@dataclass
class PageSection:
    """A top-level child of <body> or a landmark element (header, nav, section, footer...)."""

    tag: str
    x: float
    y: float
    width: float
    height: float
    background: tuple[int, int, int]
    depth: int
    text: str


@dataclass
class RenderResult:
    """What one render produced. ``ok=False`` comes with ``error`` and no screenshot."""

    ok: bool
    error: str | None = None
    png: bytes | None = None
    width: int = 0  # screenshot size in pixels (CSS px, scale 1)
    height: int = 0
    page_height: int = 0  # the document's full height, before the screenshot cap
    truncated: bool = False  # screenshot capped at max_height, or more than MAX_BLOCKS text blocks
    title: str = ""
    background: tuple[int, int, int] = (255, 255, 255)
    blocks: list[TextBlock] = field(default_factory=list)
    images: list[PageImage] = field(default_factory=list)
    sections: list[PageSection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Image.Image | None:
        """The screenshot as an RGB PIL image (decoded on first use)."""
        if self._image is None and self.png is not None:
            self._image = Image.open(io.BytesIO(self.png)).convert("RGB")
        return self._image

    @classmethod
    def from_extraction(cls, dom: dict[str, Any], png: bytes, width: int, height: int) -> RenderResult:
        """A successful result from ``js/extract_dom.js``'s output and a screenshot of width x height."""
        page_height = max(int(dom["page_height"]), 1)
        return cls(
            ok=True,
            png=png,
            width=width,
            height=height,
            page_height=page_height,
            truncated=bool(dom["truncated"]) or page_height > height,
            title=dom["title"],
            background=tuple(dom["background"]),
            blocks=[TextBlock(**{**b, "color": tuple(b["color"]), "background": tuple(b["background"])}) for b in dom["blocks"]],
            images=[PageImage(**image) for image in dom["images"]],
            sections=[PageSection(**{**s, "background": tuple(s["background"])}) for s in dom["sections"]],
        )
