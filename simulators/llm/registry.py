"""The model registry: trained actor versions, each a base model spec plus a LoRA adapter.

Layout under ``$COLLAB_HOME/models/registry/``::

    versions/v0001/adapter/        the LoRA adapter (peft ``save_pretrained`` layout)
    versions/v0001/meta.json       id, parent, base, data snapshot, config, metrics, created, algorithm, promoted
    current                        one line: the version the app serves (absent = the base model)
    history.jsonl                  every change of ``current`` (promote / rollback / serve-base), appended

Writes are atomic: a version is assembled in a hidden temporary directory and renamed into
``versions/`` in one step (a killed write leaves only a ``.partial-*`` directory, which is never
listed), and ``current`` is replaced with ``os.replace``. Version ids are claimed by that rename,
so two concurrent ``register`` calls never get the same id.

``resolve(version)`` gives ``(base_spec, adapter_dir)``, which is what
``simulators.llm.load_model(base_spec, adapter=adapter_dir)`` needs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulators.jsonl import read_jsonl
from simulators.paths import models_dir

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
CURRENT_ALIASES = ("current", "latest")


class RegistryError(LookupError):
    """A version does not exist or the registry cannot be written; the message says which."""


@dataclass(frozen=True)
class Version:
    id: str
    path: Path
    meta: dict[str, Any]

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def base(self) -> str:
        return self.meta["base"]

    @property
    def parent(self) -> str | None:
        return self.meta.get("parent")


class ModelRegistry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else models_dir() / "registry"
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    # -- reads --------------------------------------------------------------------------------
    def list_versions(self) -> list[Version]:
        """Every complete version, oldest first (half-written ones are hidden directories, never listed)."""
        found = []
        for path in self.versions_dir.iterdir():
            match = VERSION_PATTERN.match(path.name)
            if match and (path / "meta.json").is_file():
                found.append((int(match.group(1)), path))
        return [self._read(path) for _, path in sorted(found)]

    def get(self, version: str) -> Version:
        """A version by id; ``current``/``latest`` are accepted as names too."""
        if version == "latest":
            versions = self.list_versions()
            if not versions:
                raise RegistryError(f"the registry at {self.root} has no versions yet")
            return versions[-1]
        if version == "current":
            current = self.current()
            if current is None:
                raise RegistryError(f"no current version is set in {self.root} (the base model is served)")
            return current
        path = self.versions_dir / version
        if not VERSION_PATTERN.match(version) or not (path / "meta.json").is_file():
            known = ", ".join(v.id for v in self.list_versions()) or "none"
            raise RegistryError(f"no model version {version!r} in {self.root} (known: {known})")
        return self._read(path)

    def resolve(self, version: str) -> tuple[str, str]:
        """``(base_spec, adapter_dir)`` of a version, for ``load_model(base_spec, adapter=adapter_dir)``."""
        found = self.get(version)
        return found.base, str(found.adapter_dir)

    def current(self) -> Version | None:
        """The version the app serves, or None when none was set (the base model)."""
        pointer = self.root / "current"
        if not pointer.is_file():
            return None
        version = pointer.read_text(encoding="utf-8").strip()
        return self.get(version) if version else None

    def history(self) -> list[dict[str, Any]]:
        return read_jsonl(self.root / "history.jsonl")

    # -- writes -------------------------------------------------------------------------------
    def register(
        self, adapter_dir: str | Path, *, base: str, parent: str | None = None, algorithm: str,
        data: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None, promoted: bool = False, extra: dict[str, Any] | None = None,
    ) -> Version:
        """Copy ``adapter_dir`` into a new version and write its metadata; returns the version."""
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise RegistryError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
        if parent is not None:
            self.get(parent)  # a parent must exist
        partial = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=".partial-"))
        try:
            shutil.copytree(adapter_dir, partial / "adapter")
            meta = {"id": None, "parent": parent, "base": base, "algorithm": algorithm,
                    "created": time.time(), "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "data": data or {}, "config": config or {}, "metrics": metrics or {},
                    "promoted": bool(promoted), **(extra or {})}
            return self._claim_id(partial, meta)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already when the rename succeeded

    def set_current(self, version: str, *, reason: str = "set") -> Version:
        """Point ``current`` at ``version`` (atomically) and log the change."""
        found = self.get(version)
        previous = self.current()
        _write_atomic(self.root / "current", found.id + "\n")
        self._log(reason, found, previous)
        return found

    def rollback(self, version: str | None = None) -> Version:
        """Serve an earlier version again: ``version``, or by default the parent of the current one."""
        if version is None:
            current = self.current()
            if current is None or current.parent is None:
                raise RegistryError("nothing to roll back to: no current version, or it has no parent")
            version = current.parent
        return self.set_current(version, reason="rollback")

    def serve_base(self, *, reason: str = "rollback") -> None:
        """Serve the base model again (no current version); logged like any other change."""
        previous = self.current()
        (self.root / "current").unlink(missing_ok=True)  # one atomic step, like the rename that sets it
        self._log(reason, None, previous)

    # -- internals ----------------------------------------------------------------------------
    def _log(self, action: str, version: Version | None, previous: Version | None) -> None:
        with open(self.root / "history.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps({"time": time.time(), "action": action, "version": version.id if version else None,
                                  "previous": previous.id if previous else None}) + "\n")

    def _read(self, path: Path) -> Version:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        return Version(id=path.name, path=path, meta=meta)

    def _claim_id(self, partial: Path, meta: dict[str, Any]) -> Version:
        """Rename ``partial`` to the next free ``vNNNN``; a lost race (the name got taken) tries the next."""
        taken = [int(m.group(1)) for p in self.versions_dir.iterdir() if (m := VERSION_PATTERN.match(p.name))]
        number = max(taken, default=0) + 1
        for _ in range(1000):
            version_id = f"v{number:04d}"
            meta["id"] = version_id
            _write_atomic(partial / "meta.json", json.dumps(meta, indent=2, default=str))
            try:
                # Fails when the target exists and is not empty: every version has its meta.json.
                os.rename(partial, self.versions_dir / version_id)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                number += 1
                continue
            return self.get(version_id)
        raise RegistryError(f"could not claim a version id in {self.versions_dir}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def default_registry() -> ModelRegistry:
    return ModelRegistry()


def resolve(version: str) -> tuple[str, str]:
    """``(base_spec, adapter_dir)`` of a version in the default registry (``registry:VERSION`` specs)."""
    return default_registry().resolve(version)


def list_versions() -> list[Version]:
    return default_registry().list_versions()


def get(version: str) -> Version:
    return default_registry().get(version)


def current() -> Version | None:
    return default_registry().current()


def set_current(version: str) -> Version:
    return default_registry().set_current(version)


def rollback(version: str | None = None) -> Version:
    return default_registry().rollback(version)


def serve_base() -> None:
    default_registry().serve_base()


def register(adapter_dir: str | Path, **kwargs: Any) -> Version:
    return default_registry().register(adapter_dir, **kwargs)
