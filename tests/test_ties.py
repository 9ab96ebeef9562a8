"""Equal logits give equal scores, bit for bit: a score that is a function of the logits alone must not break
ties by rounding, and identical inputs score identically wherever they sit in a batch (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradtrust
from gradtrust import functional as F
from gradtrust.evaluation.selective import auac

#: Scores that read more than the logits on this model: GradNorm (``‖h‖₁``), Purview (parameter gradients) and
#: VOICE (feature maps). Every other method is a function of the logits (and of gradients that are zero here).
FEATURE_DEPENDENT = {"gradnorm", "purview_initial", "purview_final", "voice_snr", "voice_iou"}


class ConstantLogits(nn.Module):
    """The issue's model: a CNN whose final layer has weight 0 and bias (0, 1, 2), so every input gets the
    logits (0, 1, 2) while its penultimate features differ."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.fc = nn.Linear(24, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_identical_logits_give_identical_scores_for_every_method():
    torch.manual_seed(0)
    model = ConstantLogits()
    x = torch.rand(24, 3, 8, 8)  # 24 different images
    result = gradtrust.score(model, x, "all")
    assert torch.equal(result.logits, torch.tensor([[0.0, 1.0, 2.0]]).expand(24, 3))
    checked = [name for name in result.scores if name not in FEATURE_DEPENDENT]
    assert {"gradtrust", "gradtrust_topk", "softmax", "mc_dropout", "odin"} <= set(checked)
    for name in checked:
        values = result[name].numpy()
        assert np.unique(values.view(np.int64)).size == 1, (name, values)  # bitwise, NaN included
    # tied scores rank nobody first: AUAC equals the accuracy-at-every-percentile of a constant score
    labels = torch.arange(24) % 3
    correct = (result.prediction == labels).numpy()
    assert auac(result["gradtrust"].numpy(), correct) == auac(result["softmax"].numpy(), correct)
    assert auac(result["gradtrust_topk"].numpy(), correct) == auac(result["softmax"].numpy(), correct)


@pytest.mark.parametrize("batch", [2, 23])
def test_gradtrust_closed_form_is_a_function_of_the_logits(batch):
    """functional.gradtrust / gradtrust_topk on random logits repeated with different features: equal bits per
    logit row; and still the ratio of the row energies e_c = a_c⁴ Var_d(h_d²) (to rounding)."""
    torch.manual_seed(1)
    z = torch.randn(1, 5).double().expand(batch, 5).contiguous()
    h = torch.rand(batch, 7).double() * torch.logspace(-3, 3, batch).double()[:, None]
    for fn in (F.gradtrust, F.gradtrust_topk):
        values = fn(z, h)
        assert torch.equal(values, values[:1].expand(batch)), fn.__name__
    e = F.mse_gradient_row_energy(z, h)
    torch.testing.assert_close(F.gradtrust(z, h), e.max(1).values / e.mean(1), rtol=1e-12, atol=0)
    flat = h.clone()
    flat[0] = 0.0  # no feature variance: undefined, decided by the features alone
    assert torch.isnan(F.gradtrust(z, flat)[0]) and torch.isnan(F.gradtrust_topk(z, flat)[0])
    assert not torch.isnan(F.gradtrust(z, flat)[1:]).any()


def test_identical_inputs_score_identically_wherever_they_sit_in_the_batch():
    """The same image at positions 0, 5, 17 and 36 of a batch of 37 (sharing one sample id, which MC dropout's
    masks are drawn from): every method gives it the same value, bit for bit."""
    model = gradtrust.load_model("digits:digits_cnn", "DEFAULT").module
    from gradtrust.data.digits import DigitsDataset

    data = DigitsDataset("test")
    x = torch.stack([data[i].input for i in range(37)])
    positions = [0, 5, 17, 36]
    x[positions] = x[0].clone()
    ids = torch.arange(37)
    ids[positions] = 0
    result = gradtrust.score(model, x, "all", sample_ids=ids)
    assert not result.skipped
    for name, values in result.scores.items():
        bits = values[positions].numpy().view(np.int64)
        assert np.unique(bits).size == 1, (name, values[positions])
