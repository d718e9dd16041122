"""Where collab-rl keeps its files: ``COLLAB_HOME`` (default ``~/.collab-rl``).

Layout::

    $COLLAB_HOME/models/smollm2-135m-instruct/   dense HF copy of the default model
    $COLLAB_HOME/models/registry/                trained actor versions (base + adapter + metadata)
    $COLLAB_HOME/web/                            Tailwind files served to the renderer offline
    $COLLAB_HOME/collab.sqlite                   the app's session database
"""

from __future__ import annotations

import os
from pathlib import Path


def collab_home() -> Path:
    home = Path(os.environ.get("COLLAB_HOME") or Path.home() / ".collab-rl").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    path = collab_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def web_dir() -> Path:
    """Offline copies of the Tailwind files that ColBench pages link (fetched by scripts/setup.sh)."""
    return collab_home() / "web"
