"""The JavaScript the renderer runs inside pages, kept as real files in ``js/`` beside this module.

They are package data (``[tool.setuptools.package-data]`` in pyproject.toml), read through
:mod:`importlib.resources` so that an installed wheel finds them as an editable checkout does.
"""

from __future__ import annotations

from importlib import resources

INIT_PAGE_FILE = "init_page.js"  # added to every context: seeded Math.random, no window.open
EXTRACT_DOM_FILE = "extract_dom.js"  # one page.evaluate: text blocks, images, sections, height
SCRIPT_FILES = (INIT_PAGE_FILE, EXTRACT_DOM_FILE)


def page_script(name: str) -> str:
    """The text of one of :data:`SCRIPT_FILES`."""
    return (resources.files(__package__) / "js" / name).read_text(encoding="utf-8")


INIT_SCRIPT = page_script(INIT_PAGE_FILE)
EXTRACT_SCRIPT = page_script(EXTRACT_DOM_FILE)
