"""Class lists: the ImageNet-1k WordNet IDs, and matching a dataset's classes to a model's outputs.

``resources/imagenet_wnids.txt`` holds the 1000 ImageNet-1k (ILSVRC2012) WordNet IDs, one per line as
``wnid<TAB>name``, in sorted order: line ``i`` is output ``i`` of every ImageNet-1k classifier trained with
the usual class-folder pipeline (torchvision's and timm's ImageNet weights). The names are torchvision's
``_IMAGENET_CATEGORIES`` (unique: the two "crane"s are "crane" and "crane bird", the two "maillot"s
"maillot" and "maillot tank suit").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources

from gradtrust.data.images import list_examples
from gradtrust.errors import DataError

__all__ = [
    "IMAGENET_NUM_CLASSES",
    "imagenet_wnid_to_index",
    "is_wnid",
    "load_imagenet_class_names",
    "load_imagenet_wnids",
    "resolve_class_indices",
]

IMAGENET_NUM_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")
_EXAMPLES = 5


def is_wnid(name: str) -> bool:
    """Whether ``name`` looks like a WordNet ID (``n`` and eight digits, e.g. ``n01440764``)."""
    return isinstance(name, str) and _WNID.fullmatch(name) is not None


@functools.lru_cache(maxsize=1)
def _imagenet_synsets() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("gradtrust.data").joinpath("resources/imagenet_wnids.txt").read_text("utf-8")
    rows = [line.partition("\t") for line in text.splitlines() if line.strip()]  # wnid, tab, name
    wnids, names = [wnid.strip() for wnid, _, _ in rows], [name.strip() for _, _, name in rows]
    if (len(wnids) != IMAGENET_NUM_CLASSES or len(set(wnids)) != IMAGENET_NUM_CLASSES
            or wnids != sorted(wnids) or not all(map(is_wnid, wnids))):
        raise DataError("gradtrust/data/resources/imagenet_wnids.txt is damaged: expected 1000 unique, "
                           "sorted WordNet IDs; reinstall gradtrust")
    return tuple(wnids), tuple(names)


def load_imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet IDs in model output order (sorted): ``n01440764`` … ``n15075141``."""
    return list(_imagenet_synsets()[0])


def load_imagenet_class_names() -> list[str]:
    """Human-readable names of the 1000 ImageNet-1k classes, in output order (torchvision's names)."""
    return list(_imagenet_synsets()[1])


@functools.lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(_imagenet_synsets()[0])}


def imagenet_wnid_to_index() -> dict[str, int]:
    """``{wnid: output index}`` for the 1000 ImageNet-1k classes."""
    return dict(_wnid_index())


def _normalise(name: str) -> str:
    """Loose form of a class name: case, ``_``/``-`` versus space and repeated spaces do not matter."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def _match_by_name(dataset_classes: Sequence[str], model_names: Sequence[str]) -> tuple[dict[int, int], list[str]]:
    """Map dataset label → model index by exact name, then by loose name where that is unambiguous.

    Returns the matches found and the dataset classes that matched nothing (or matched ambiguously).
    """
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for j, name in enumerate(model_names):
        exact.setdefault(str(name), []).append(j)
        loose.setdefault(_normalise(str(name)), []).append(j)
    matches: dict[int, int] = {}
    unmatched: list[str] = []
    for i, cls in enumerate(dataset_classes):
        hits = exact.get(cls) or loose.get(_normalise(cls)) or []
        if len(hits) == 1:
            matches[i] = hits[0]
        else:
            unmatched.append(cls)
    return matches, unmatched


def resolve_class_indices(
    dataset_classes: Sequence[str],
    model_class_names: Sequence[str] | None,
    num_outputs: int,
) -> list[int]:
    """For each dataset class (in label order) the model output index it corresponds to.

    Call it before scoring: a mismatch raises :class:`DataError` before any work starts. Rules, in order:

    1. every dataset class is an ImageNet-1k WordNet ID, the model has 1000 outputs and its class names
       are not WordNet IDs themselves → map through :func:`load_imagenet_wnids` (so a class-folder
       ImageNet subset, e.g. 10 wnid folders, gets the right output indices);
    2. every dataset class is one of the model's class names (any order, a subset allowed; exact match,
       else case/``_``/``-``-insensitive when unambiguous) → map by name;
    3. as many dataset classes as model outputs → identity (sorted folder order = output order), unless
       some dataset classes carry model class names at *other* positions, which means the order is wrong;
    4. otherwise :class:`DataError` naming both sides (counts and a few examples).

    ``model_class_names``: one name per model output, or ``None``/empty when unknown.
    """
    classes = [str(c) for c in dataset_classes]
    names = [str(n) for n in model_class_names] if model_class_names else []
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise DataError(f"the model's number of outputs must be a positive integer, got {num_outputs!r}")
    if not classes:
        raise DataError("the dataset has no classes")
    if names and len(names) != num_outputs:
        raise DataError(f"the model has {num_outputs} outputs but {len(names)} class names")

    def sides() -> str:
        model = f"the model has {num_outputs} outputs"
        model += f" (class names: {list_examples(names)})" if names else " (class names unknown)"
        return f"the dataset has {len(classes)} classes ({list_examples(classes)}); {model}"

    # 1. ImageNet WordNet IDs.
    names_are_wnids = bool(names) and all(map(is_wnid, names))
    if all(map(is_wnid, classes)) and num_outputs == IMAGENET_NUM_CLASSES and not names_are_wnids:
        index = _wnid_index()
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise DataError(
                f"{len(unknown)} dataset classes are WordNet IDs outside ImageNet-1k: {list_examples(unknown)}; "
                f"the model's 1000 outputs are the ImageNet-1k classes. {sides()}."
            )
        return [index[c] for c in classes]

    # 2. By name.
    matches: dict[int, int] = {}
    unmatched: list[str] = list(classes)
    if names:
        matches, unmatched = _match_by_name(classes, names)
        if not unmatched:
            targets = list(matches.values())
            if len(set(targets)) != len(targets):
                raise DataError(f"several dataset classes map to the same model output by name. {sides()}.")
            return [matches[i] for i in range(len(classes))]

    # 3. Identity.
    if len(classes) == num_outputs:
        misplaced = [(classes[i], j) for i, j in matches.items() if i != j]
        if misplaced:
            examples = ", ".join(f"{c!r} is dataset label {classes.index(c)} but model output {j}"
                                 for c, j in misplaced[:_EXAMPLES])
            raise DataError(
                f"the dataset's classes cannot be matched to the model's: {len(unmatched)} dataset classes "
                f"are not model class names ({list_examples(unmatched)}), and taking them in folder order would be "
                f"wrong because {examples}. Rename the class folders to the model's class names. {sides()}."
            )
        return list(range(num_outputs))

    # 4. Mismatch.
    detail = ""
    if names and matches:
        detail = (f" {len(matches)} dataset classes match model class names but {len(unmatched)} do not: "
                  f"{list_examples(unmatched)}.")
    elif names:
        detail = " None of the dataset's class names is a model class name."
    raise DataError(
        f"the dataset's classes do not match the model's outputs: {sides()}.{detail} Use class folders "
        "named after the model's classes (or ImageNet WordNet IDs for a 1000-class ImageNet model), or a "
        f"model with as many outputs as the dataset has classes: pass --num-classes {len(classes)} (with the "
        f"weights of that head, --weights FILE), or load_model(..., num_classes={len(classes)}) from Python."
    )
