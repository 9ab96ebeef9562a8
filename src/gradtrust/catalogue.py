"""What a reader of results needs to know about the trust-score methods, without importing torch: their
names in registry order (the report's column order), display names, and which ones the GradTrust paper's
table compares.

The scoring registry (:mod:`gradtrust.scores.registry`) needs torch; reports only need these facts, so they
are stated here, and the registry takes a built-in method's display name and ``in_paper`` from here. A plug-in's
method is added by the registry (:func:`describe`) or learnt from a run's manifest (:func:`learn`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    """A trust-score method as a report shows it: its column ``name``, ``display_name`` and whether the
    paper's table compares it (``in_paper``)."""

    name: str
    display_name: str
    in_paper: bool = False


#: Every known method by name, in registry order: the built-ins, then VOICE's two (registered after them,
#: docs/explanations.md), then whatever :func:`describe` added.
CATALOGUE: dict[str, MethodInfo] = {info.name: info for info in (
    MethodInfo("softmax", "Softmax", True),
    MethodInfo("entropy", "Entropy", True),
    MethodInfo("max_logit", "NLL (max logit)", True),
    MethodInfo("margin", "Margin", True),
    MethodInfo("odin", "ODIN", True),
    MethodInfo("mc_dropout", "MCD", True),
    MethodInfo("gradnorm", "GradNorm", True),
    MethodInfo("purview_initial", "Purview (initial)", True),
    MethodInfo("purview_final", "Purview (final)", True),
    MethodInfo("gradtrust", "GradTrust", True),
    MethodInfo("gradtrust_topk", "GradTrust top-k"),
    MethodInfo("brier", "Brier"),
    MethodInfo("logit_margin", "Logit margin"),
    MethodInfo("energy", "Energy"),
    MethodInfo("doctor", "DOCTOR"),
    MethodInfo("maxlogit_pnorm", "MaxLogit-pNorm"),
    MethodInfo("voice_snr", "VOICE SNR"),
    MethodInfo("voice_iou", "VOICE 1 − IoU"),
)}


def describe(info: MethodInfo) -> MethodInfo:
    """Add (or replace) a method's entry; a new name goes after every known one. Returns ``info``."""
    CATALOGUE[info.name] = info
    return info


def learn(described: object) -> None:
    """Add the methods a run's manifest describes (``method_info``: ``{name: {"display_name", "in_paper"}}``)
    that are not known yet, in their order: a report names a plug-in's methods without loading it."""
    if isinstance(described, dict):
        for name, info in described.items():
            if name not in CATALOGUE and isinstance(info, dict) and isinstance(info.get("display_name"), str):
                describe(MethodInfo(str(name), info["display_name"], bool(info.get("in_paper", False))))


def known_methods() -> list[str]:
    """Every known method name, in registry order."""
    return list(CATALOGUE)


def display_name(name: str) -> str:
    """The display name of a known method; any other column keeps its own name."""
    info = CATALOGUE.get(name)
    return info.display_name if info is not None else name


def order_methods(names: Iterable[str]) -> list[str]:
    """Known methods in registry order, then the other names in the order given (no duplicates)."""
    wanted = list(dict.fromkeys(names))
    known = [n for n in CATALOGUE if n in wanted]
    return known + [n for n in wanted if n not in known]


def paper_methods() -> list[str]:
    """The methods the GradTrust paper's table compares, in registry order."""
    return [info.name for info in CATALOGUE.values() if info.in_paper]
