"""``hf:<folder>``: a tiny random ``transformers`` ViT saved with ``save_pretrained`` and scored through the CLI,
against the same model and image processor run by ``transformers`` directly. Nothing is fetched from the Hub."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gradtrust.cli import main
from gradtrust.errors import ModelError
from gradtrust.models import load_model

transformers = pytest.importorskip("transformers")  # the `hf` extra, listed in the `test` extra


@pytest.fixture
def vit_folder(tmp_path):
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=2,
                                    id2label={0: "dog", 1: "cat"}, label2id={"dog": 0, "cat": 1})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    folder = tmp_path / "vit"
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


@pytest.fixture
def no_hub(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the Hugging Face Hub")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse, raising=False)


@pytest.mark.slow
def test_hf_folder_scored_through_the_cli(tmp_path, vit_folder, no_hub):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, size in enumerate([(20, 30), (40, 18)]):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["score", "--model", f"hf:{vit_folder}", "--data", str(root), "--out", str(out),
                                       "--methods", "softmax,gradtrust,odin", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_map"] == [1, 0]  # folders cat, dog -> id2label order dog, cat
    meta = manifest["model"]["meta"]
    assert meta["family"] == "hf" and meta["preprocessing"]["image_std"] == [0.2, 0.25, 0.3]
    assert meta["normalization_std"] == [0.2, 0.25, 0.3]
    # The reference: transformers itself (its processor and model), independent of GradTrust's loader.
    model = transformers.AutoModelForImageClassification.from_pretrained(vit_folder, local_files_only=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(vit_folder, local_files_only=True)
    frame = pd.read_parquet(out / "scores.parquet")
    images = [Image.open(p).convert("RGB") for p in frame["path"]]
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits.double()
    assert np.allclose(frame["softmax"], logits.softmax(1).max(1).values.numpy(), atol=1e-6)
    assert (frame["prediction"].to_numpy() == logits.argmax(1).numpy()).all()
    assert manifest["score_info"]["gradient_path"] == "closed_form"


@pytest.mark.slow
def test_hf_folder_errors(tmp_path, vit_folder):
    with pytest.raises(ModelError, match="not a folder"):
        load_model(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ModelError, match="no --weights"):
        load_model(f"hf:{vit_folder}", weights=str(vit_folder / "model.safetensors"))
    with pytest.raises(ModelError, match="2 outputs"):
        load_model(f"hf:{vit_folder}", num_classes=3)
