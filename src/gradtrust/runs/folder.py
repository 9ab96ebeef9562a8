"""A run folder, claimed by every command that writes one (score, explain, detect, the fits of introspect and
gradcon, gradcon score) before any work (:meth:`RunFolder.claim`): ``run.json`` = ``{"kind", "format",
"identity_sha256", "created_at", "identity"}`` is written atomically into an empty folder; the same identity
resumes; another identity, or outputs without a ``run.json``, are refused (:class:`RunConflictError` naming
every differing key with both values in full) unless ``force``, which removes the old outputs first. The
``kind`` and ``format`` go into every manifest too (:meth:`RunFolder.write_manifest`)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from gradtrust.errors import GradTrustError
from gradtrust.runs import chunks as ch
from gradtrust.runs.identity import identity_differences, sha256_of

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"


class RunConflictError(GradTrustError):
    """The output folder holds results of a different run (use another output folder or ``force``)."""


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the manifests' timestamps)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """The folder ``out`` of one run of ``kind`` with ``identity`` (a JSON-serialisable dict).

    ``outputs`` are the names (files or folders, relative to ``out``) that the run writes besides
    ``run.json``: what ``force`` removes and what, found without a ``run.json``, makes the folder foreign.
    """

    def __init__(self, out: str | Path, kind: str, format: str, identity: dict, outputs: tuple[str, ...] = ()):
        self.out = Path(out).expanduser().resolve()
        self.kind, self.format = kind, format
        self.identity = {"kind": kind, "format": format, **identity}
        self.run_id = sha256_of(self.identity)
        self.outputs = (MANIFEST_FILE, *outputs)

    def read(self, name: str = RUN_FILE) -> dict | None:
        """A JSON file of the folder (``{}`` when unreadable, ``None`` when absent)."""
        try:
            value = json.loads((self.out / name).read_text("utf-8")) if (self.out / name).is_file() else None
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) or value is None else {}

    def differences(self) -> list[str] | None:
        """``None`` when the folder holds no run; else how its identity differs from this one (``[]``: same)."""
        old = self.read()
        if old is None:
            return None
        if not isinstance(old.get("identity"), dict):  # damaged (a JSON error, cut short) or not a run.json
            try:
                json.loads((self.out / RUN_FILE).read_text("utf-8"))
                why = "it holds no run identity"
            except (OSError, ValueError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            return [f"its {RUN_FILE} cannot be read ({why})"]
        if old.get("identity_sha256") == self.run_id:
            return []
        return identity_differences(old.get("identity", {}), self.identity) or [f"{RUN_FILE}: unreadable"]

    def claim(self, force: bool = False) -> bool:
        """Make the folder this run's (see the module docstring); ``True`` when it already was (resume)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise RunConflictError(f"the output path {out} is a file; give a folder to --out.")
        diffs = self.differences()
        leftovers = [name for name in self.outputs if (out / name).exists()]
        if not force and diffs is None and leftovers:
            raise RunConflictError(
                f"the output folder {out} holds results ({', '.join(leftovers)}) but no {RUN_FILE}, so they "
                "cannot be resumed safely. Use another --out, or --force to discard them.")
        if not force and diffs:
            raise RunConflictError(
                f"the output folder {out} holds {'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind} run with "
                f"other settings ({'; '.join(diffs)}). "
                "Use another --out to keep both, or --force to discard the old results.")
        if force and (diffs or leftovers):
            ch.remove_outputs(*(out / name for name in self.outputs), out / RUN_FILE)
            diffs = None
        out.mkdir(parents=True, exist_ok=True)
        ch.remove_temporary_files(out)
        if diffs is None:
            ch.atomic_write_json(out / RUN_FILE, {"kind": self.kind, "format": self.format,
                                                  "identity_sha256": self.run_id, "created_at": now(),
                                                  "identity": self.identity})
            return False
        return True

    def created_at(self) -> str | None:
        """When ``run.json`` was first written (``None`` when unknown)."""
        return (self.read() or {}).get("created_at")

    def write_manifest(self, body: dict[str, Any]) -> Path:
        """``manifest.json`` = ``{"kind", "format", "run_id", **body}``, written atomically."""
        path = self.out / MANIFEST_FILE
        ch.atomic_write_json(path, {"kind": self.kind, "format": self.format, "run_id": self.run_id, **body})
        return path

    def is_complete(self) -> bool:
        """True when the folder holds a finished run of exactly this identity (its manifest names it)."""
        return self.differences() == [] and (self.read(MANIFEST_FILE) or {}).get("run_id") == self.run_id
