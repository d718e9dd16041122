"""The answer inside an agent's final message: the Python source of a backend answer
(``extract_code``) and the page of a frontend one (``extract_html``)."""

from __future__ import annotations

import ast
import re
import textwrap

from simulators.domain import ANSWER_MARKER

_PYTHON_FENCES = {"", "python", "py", "python3", "py3"}
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(```|\Z)", re.S)  # \Z: an unclosed last fence
_CODE_START = re.compile(r"^(?:async\s+def|def|class|import|from|@)\b")
_MAX_TRIM_LINES = 400


def extract_code(message: str | None) -> str | None:
    """The Python source of an agent's final answer, or None when it holds no code.

    Looks after the last ``I WANT TO ANSWER:`` when present (else, or when nothing is found
    there, in the whole message). Fenced blocks are preferred: among Python (or untagged)
    fences, the largest one that parses and defines a function or class (the last of equals);
    otherwise text is trimmed to the longest stretch that parses, starting at the first
    ``def``, ``class``, import or decorator line, so chatter before and after code is ignored.
    A last Python fence left unclosed (the reply hit its token limit) is taken as it stands when
    nothing else parses: it is scored, and fails with its SyntaxError.
    """
    if not message or not message.strip():
        return None
    regions = [message]
    if ANSWER_MARKER in message:
        regions.insert(0, message.rsplit(ANSWER_MARKER, 1)[1])
    for region in regions:
        code = _code_in(region)
        if code is not None:
            return code
    return None


def _code_in(text: str) -> str | None:
    fences = [(textwrap.dedent(body), not end) for lang, body, end in _FENCE.findall(text)
              if lang.lower() in _PYTHON_FENCES]
    blocks = [block for block, _ in fences]
    defining = [block for block in blocks if _defines_something(block)]
    if defining:
        return max(reversed(defining), key=len).strip("\n")
    for candidate in [*sorted(blocks, key=len, reverse=True), text]:
        code = _trim_to_code(candidate)
        if code is not None:
            return code
    # A reply cut at the token limit inside its code block: run what it wrote, so that every
    # test reports the SyntaxError instead of "no code" beside a visible ```python block.
    unclosed = [block for block, cut in fences if cut and any(map(_CODE_START.match, block.splitlines()))]
    return unclosed[-1].strip("\n") if unclosed else None


def _defines_something(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in tree.body)


def _trim_to_code(text: str) -> str | None:
    """The longest run of lines from the first code-looking line that parses and defines something."""
    lines = textwrap.dedent(text).splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if start is None:
        return None
    for end in range(min(len(lines), start + _MAX_TRIM_LINES), start, -1):
        code = "\n".join(lines[start:end]).strip("\n")
        if _defines_something(code):
            return code
    return None


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
