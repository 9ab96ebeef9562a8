"""Which run folders the report's inputs hold, of which kind (:func:`kind_of`), and the registry of the sections
that render them (:func:`register_section`): a new capability adds a kind here and one builder function."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradtrust import schema

__all__ = ["DATA_FILES", "KINDS", "SECTIONS", "LoadProblem", "Section", "discover_runs", "drawing", "kind_of", "mapping",
           "read_manifest", "register_section", "unlabelled_run"]

#: The kinds in the order of the page, with the file that holds each kind's results.
DATA_FILES = {"score": schema.SCORES_FILE, "explain": "explanations.parquet", "detect": "table.csv",
              "introspect": "introspection.parquet", "gradcon": "anomaly_scores.parquet",
              "decisions": "decisions.json"}
KINDS = tuple(DATA_FILES)
#: How far below a folder given on the command line run folders are looked for.
SEARCH_DEPTH = 5
#: Sub-folders that hold a run's parts, never runs (not searched).
_PARTS = frozenset({"chunks", "sets", "images", "figures", "features"})


@dataclass
class LoadProblem:
    """One input that could not be used: its path and the reason, in words."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@contextmanager
def drawing(problems: list[LoadProblem], name: str) -> Iterator[None]:
    """Run the block that draws figure ``name``; an exception becomes a problem (one figure never stops the
    report)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - whatever the drawing raised
        problems.append(LoadProblem(name, f"could not be drawn: {exc!r}"))


def read_manifest(folder: Path) -> dict[str, Any]:
    """``folder/manifest.json`` as a dict (``{}`` when missing, unreadable or not an object)."""
    try:
        data = json.loads((folder / schema.MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kind_of(folder: Path) -> str | None:
    """The kind of run ``folder`` holds, or None: the manifest's ``kind`` when its data file is present, else the
    kind whose data file it holds (runs written before manifests named their kind)."""
    manifest = read_manifest(folder)
    stated = manifest.get("kind")
    if stated in DATA_FILES and (folder / DATA_FILES[stated]).is_file():
        return str(stated)
    for kind, name in DATA_FILES.items():
        if (folder / name).is_file() and (kind != "detect" or "challenges" in manifest):
            return kind
    return None


def unlabelled_run(folder: Path) -> bool:
    """Whether the score run in ``folder`` has no labelled row (its manifest's ``counts.labelled`` is 0)."""
    return mapping(read_manifest(folder).get("counts")).get("labelled") == 0


def _walk(folder: Path, depth: int) -> Iterable[tuple[str, Path]]:
    kind = kind_of(folder)
    if kind == "score" and unlabelled_run(folder):  # nothing to evaluate: the decisions section shows it
        yield "decisions", folder
        return
    if kind is not None:
        yield kind, folder
        if kind == "score" and (folder / DATA_FILES["decisions"]).is_file():  # a gate applied to it
            yield "decisions", folder
        if kind == "score":  # a score run holds no other run but its explanations
            if (folder / "explanations").is_dir() and kind_of(folder / "explanations") == "explain":
                yield "explain", folder / "explanations"
            return
    if depth <= 0:
        return
    try:
        entries = sorted(e for e in folder.iterdir() if e.is_dir() and e.name not in _PARTS)
    except OSError:
        return
    for entry in entries:
        yield from _walk(entry, depth - 1)


def discover_runs(inputs: Iterable[str | Path]) -> tuple[dict[str, list[Path]], list[LoadProblem]]:
    """The run folders (or score parquet files) the inputs name, by kind, each once, in input order.

    A file is taken as a score table (or, named like a kind's data file, as its folder); a folder is searched
    a few levels deep. Inputs that do not exist or hold no run become problems.
    """
    found: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    seen: set[tuple[str, Path]] = set()
    problems: list[LoadProblem] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            problems.append(LoadProblem(str(p), "does not exist."))
            continue
        if p.is_file():
            hits = [(kind_of(p.parent) or "score", p.parent)] if p.name in DATA_FILES.values() else [("score", p)]
        else:
            hits = list(_walk(p, SEARCH_DEPTH))
        if not hits:
            problems.append(LoadProblem(str(p), (
                f"is a folder without a {schema.SCORES_FILE} nor any other GradTrust run in it or its sub-folders "
                f"(a manifest.json with a \"kind\", or one of {', '.join(DATA_FILES.values())}): nothing to "
                "report. Give folders written by gradtrust score, explain, detect, introspect or gradcon score.")))
        for kind, hit in hits:
            if (kind, hit.resolve()) not in seen:  # a score run with a gate applied is also a decisions run
                seen.add((kind, hit.resolve()))
                found[kind].append(hit)
    return found, problems


def mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else ``{}`` (manifests are read defensively)."""
    return value if isinstance(value, dict) else {}


Builder = Callable[[list[Path], Any], "Section"]


@dataclass
class Section:
    """One kind's part of the report, as its builder made it: ``runs`` (one dict per run read, ``name`` and
    ``source`` at least; into ``report.json``), ``html`` (its headings carry the ids of ``links``, the ``(id,
    words)`` of the header), ``failed`` (per run with failed files: name, source, ``[(index, path, reason)]``,
    how many in all), the ``files`` and ``figures`` it wrote, and its ``problems``."""

    kind: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    html: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, list[tuple[Any, str, str]], int]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    problems: list[LoadProblem] = field(default_factory=list)

    def add_failures(self, name: str, source: Path, manifest: dict[str, Any]) -> None:
        """Record the failed files of run ``name``: its manifest's ``failures`` (``{"index", "path", "reason"}``
        each), and their number (``counts.failed`` when larger than the list)."""
        listed = [(f.get("index", ""), str(f.get("path", "")), str(f.get("reason", "")))
                  for f in manifest.get("failures") or [] if isinstance(f, dict)]
        failed = mapping(manifest.get("counts")).get("failed")
        total = max(failed if isinstance(failed, int) else 0, len(listed))
        if total:
            self.failed.append((name, str(source), listed, total))


#: kind → (the run kind in the header's words, its builder); filled by :func:`register_section`.
SECTIONS: dict[str, tuple[str, Builder]] = {}


def register_section(kind: str, words: str) -> Callable[[Builder], Builder]:
    """Register ``builder(folders, report) -> Section`` as the section of ``kind`` (``words``: e.g. "score
    run"). The builder writes its files into ``report.out_dir``; :func:`build_report` calls it in page order."""
    def wrap(builder: Builder) -> Builder:
        SECTIONS[kind] = (words, builder)
        return builder
    return wrap
