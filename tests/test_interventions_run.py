"""``gradtrust explain`` with interventions and ``--evaluate``: the stored maps and evaluation rows are those of the
API on the same inputs, the options are part of the run's identity, and the report shows the table per map."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import gradtrust
from gradtrust.cli import main
from gradtrust.data.digits import DigitsDataset
from gradtrust.explanations import PerturbationOptions
from gradtrust.explanations.run import load_maps
from gradtrust.models import load_model


class FirstDigits(torch.utils.data.Dataset):
    """The first ``n`` digits test images."""

    def __init__(self, n: int) -> None:
        self.base, self.n = DigitsDataset("test"), n
        self.classes = self.base.classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.base[i]

    def describe(self) -> dict:
        return {"kind": "first-digits", "samples": self.n}


def test_explain_run_with_interventions_and_evaluation_matches_the_api(tmp_path):
    import pyarrow.parquet as pq

    from gradtrust.explanations.run import explain_dataset

    model = load_model("digits:digits_cnn", "bundled")
    data = FirstDigits(10)
    options = PerturbationOptions(num_masks=60, patch_size=3, stride=2, seed=3)
    out = tmp_path / "explain"
    summary = explain_dataset(
        model,
        data,
        out,
        methods="gradcam,occlusion,rise",
        perturbation=options,
        evaluate=True,
        metrics="deletion,average_drop",
        batch_size=4,
        resamples=50,
        save_images=1,
        progress=False,
    )
    assert summary.num_explained == 10
    identity = json.loads((out / "run.json").read_text())
    settings = json.dumps(identity)
    assert '"num_masks": 60' in settings and '"patch_size": 3' in settings and '"metrics"' in settings

    x = torch.stack([data[i].input for i in range(10)])
    ex = gradtrust.explain(model, x, methods="gradcam,occlusion,rise", perturbation=options)
    table = pq.read_table(out / "explanations.parquet")
    assert not [c for c in table.column_names if c.startswith("eval.")]
    np.testing.assert_allclose(load_maps(table, "occlusion"), ex.layer_maps["occlusion"].numpy(), atol=1e-6)
    np.testing.assert_allclose(load_maps(table, "rise"), ex.layer_maps["rise"].numpy(), atol=1e-6)
    np.testing.assert_allclose(load_maps(table, "gradcam"), ex.layer_maps["gradcam"].numpy(), atol=1e-6)

    evaluation = pd.read_parquet(out / "evaluation.parquet")
    assert set(evaluation["method"]) == {"gradcam", "occlusion", "rise", "random", "centre"}
    assert len(evaluation) == 50
    for first in (0, 4, 8):  # batches of 4: the random baseline of a batch uses seed + its first index
        api = gradtrust.evaluate_explanations(
            model,
            x[first : first + 4],
            {m: ex[m][first : first + 4] for m in ex.methods},
            metrics="deletion,average_drop",
            seed=first,
        )
        for record in api.to_dict("records"):
            stored = evaluation[
                (evaluation["method"] == record["method"]) & (evaluation["index"] == first + record["sample"])
            ].iloc[0]
            assert stored["deletion_auc"] == record["deletion_auc"]
            assert stored["average_drop"] == record["average_drop"]
            np.testing.assert_array_equal(stored["deletion_curve"], record["deletion_curve"])
    summary_csv = pd.read_csv(out / "evaluation_summary.csv")
    assert set(summary_csv["metric"]) == {"deletion_auc", "average_drop", "increase_in_confidence"}
    gradcam = summary_csv[(summary_csv["method"] == "gradcam") & (summary_csv["metric"] == "deletion_auc")].iloc[0]
    assert gradcam["mean"] == pytest.approx(
        evaluation.loc[evaluation["method"] == "gradcam", "deletion_auc"].mean(), rel=1e-5
    )  # the CSV keeps 6 significant digits

    again = explain_dataset(
        model,
        data,
        out,
        methods="gradcam,occlusion,rise",
        perturbation=options,
        evaluate=True,
        metrics="deletion,average_drop",
        batch_size=4,
        resamples=50,
        save_images=1,
        progress=False,
    )
    assert again.num_explained == 10  # the same identity: read back, nothing refused

    from gradtrust.reporting import build_report

    page = build_report([out], tmp_path / "report", resamples=0).files["html"].read_text()
    assert "Judging the maps by masking" in page and "deletion − random" in page and "<em>random</em>" in page


def test_cli_records_the_intervention_options(tmp_path):
    out = tmp_path / "run"
    args = [
        "explain",
        "--model",
        "digits:digits_cnn",
        "--methods",
        "shape",
        "--masks",
        "20",
        "--mask-grid",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "512",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    identity = json.loads((out / "run.json").read_text())
    assert '"mask_grid": 3' in json.dumps(identity)
    changed = CliRunner().invoke(main, ["21" if a == "20" else a for a in args])
    assert changed.exit_code != 0 and "num_masks" in changed.output  # another run's folder: refused, says why
