"""The report's introspection section (``gradtrust introspect score`` runs): the feed-forward network ``f`` and the
introspective network ``H`` on the same samples, from ``introspection.parquet``. Their two score runs
(``feed_forward/``, ``introspective/``) are ordinary score runs: they enter the score tables side by side."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from gradtrust.reporting.kinds import DATA_FILES, Section, mapping, read_manifest, register_section
from gradtrust.reporting.runs import LoadProblem

__all__ = ["introspect_row", "introspect_section"]

HEADER = ("run", "model f", "data", "n", "accuracy f", "accuracy H", "agreement", "f wrong → H right",
          "f right → H wrong")


def introspect_row(frame: Any) -> dict[str, float | int]:
    """Over the rows with a known label: n, both accuracies, how often f and H agree, and the two kinds of flip
    (as fractions): ``mean(prediction == label)``, ``mean(introspective_prediction == label)``…"""
    frame = frame[frame["label"] >= 0]
    f = frame["prediction"].to_numpy() == frame["label"].to_numpy()
    h = frame["introspective_prediction"].to_numpy() == frame["label"].to_numpy()
    n = len(frame)
    agree = frame["prediction"].to_numpy() == frame["introspective_prediction"].to_numpy()
    return {"n": n, "accuracy_f": f.mean() if n else float("nan"), "accuracy_h": h.mean() if n else float("nan"),
            "agreement": agree.mean() if n else float("nan"), "f_wrong_h_right": (~f & h).mean() if n else 0.0,
            "f_right_h_wrong": (f & ~h).mean() if n else 0.0}


@register_section("introspect", "introspect run")
def introspect_section(folders: list[Path], report: Any) -> Section:
    """One row per introspect run (:func:`introspect_row`, in %)."""
    import pandas as pd

    from gradtrust.reporting.html import table_html

    e = html.escape
    section = Section("introspect")
    rows = []
    for folder in folders:
        try:
            frame = pd.read_parquet(folder / DATA_FILES["introspect"],
                                    columns=["label", "prediction", "introspective_prediction"])
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for one unreadable file
            section.problems.append(LoadProblem(str(folder / DATA_FILES["introspect"]), f"cannot be read ({exc})."))
            continue
        feed_forward = read_manifest(folder / "feed_forward")
        model, dataset = mapping(feed_forward.get("model")), mapping(feed_forward.get("dataset"))
        values = introspect_row(frame)
        section.runs.append({"name": folder.name, "source": str(folder), **values})
        section.add_failures(folder.name, folder, read_manifest(folder))
        rows.append([e(folder.name), e(str(model.get("spec", "?"))), e(str(dataset.get("spec", dataset.get("root", "?")))),
                     str(values["n"])] + [f"{100 * values[k]:.2f}" for k in ("accuracy_f", "accuracy_h", "agreement",
                                                                                "f_wrong_h_right", "f_right_h_wrong")])
    if rows:
        section.html = "\n".join([
            '<h2 id="introspect">Introspection (gradtrust introspect)</h2>',
            '<p class="legend">The feed-forward network f and its introspective network H on the same samples '
            "(known labels only; %). Their trust scores are in the score tables above, as the runs "
            "<code>…/feed_forward</code> and <code>…/introspective</code>.</p>",
            table_html(list(HEADER), rows, "introspect")])
        section.links = [("introspect", "introspection")]
    return section
