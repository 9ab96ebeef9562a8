"""What a new user hit in explanations (issue 24, item 3): saved panels stretched per channel, Hugging Face ViTs
explained at the patch projection and refusing a block's layer, VOICE's raw RuntimeError on ``intro.module``."""

from __future__ import annotations

import pytest
import torch

import gradtrust
from gradtrust.errors import ModelError
from gradtrust.explanations import explain
from gradtrust.explanations.overlay import displayable


def test_saved_panels_stretch_the_image_once_for_all_channels():
    red = torch.zeros(3, 16, 16)
    red[0] = 2.0 + 0.01 * torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    red[1:] = 0.001 * torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    picture = displayable(red)
    assert picture[..., 0].min() > 0.99  # red stays red…
    assert picture[..., 1:].max() < 0.01  # …and the near-constant green and blue stay dark (not stretched to noise)
    assert displayable(torch.full((1, 4, 4), 3.0)).max() == 0  # a constant image: no division by zero


def test_hugging_face_vit_is_explained_at_its_last_block():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32)
    last = [n for n, _ in model.named_modules() if n.endswith("layernorm_before")][-1]
    ex = explain(model, x, methods="gradcam,contrast")
    assert ex.layer == last and ex.layer_maps["gradcam"].shape == (2, 4, 4)  # the 4×4 patch grid, [CLS] dropped
    assert (ex["gradcam"].amax((1, 2)) == 1).all()  # not empty: the patch tokens still reach the class token
    first = [n for n, _ in model.named_modules() if n.endswith("layernorm_before")][0]
    assert explain(model, x, methods="gradcam", layer=first).layer_maps["gradcam"].shape == (2, 4, 4)


def test_voice_is_skipped_with_a_reason_on_an_introspective_module():
    from gradtrust.data.digits import DigitsDataset
    from gradtrust.models import load_model

    model = load_model("digits:digits_cnn", "bundled")
    data = DigitsDataset("train")
    x = torch.stack([data[i].input for i in range(120)])
    y = torch.tensor([data[i].label for i in range(120)])
    intro = gradtrust.Introspective(epochs=1, progress=False).fit(model, x, y)
    module = intro.module(model)
    result = gradtrust.score(module, x[:4])
    assert "logits do not depend on layer" in result.skipped["voice_snr"]
    assert "softmax" in result.to_dataframe().columns
    with pytest.raises(ModelError, match="do not depend on layer"):
        explain(module, x[:4], methods="gradcam")
