"""``GradCON``: a one-class anomaly detector from gradient constraints (Kwon, Prabhushankar, Temel &
AlRegib, "Backpropagated Gradient Representations for Anomaly Detection", ECCV 2020; see ``docs/gradcon.md``).

Training (one model per inlier class), on batches ``x`` of inlier images with reconstruction ``x̂``:

    L = MSE(x̂, x) + β · mean_i ( −cos(∂MSE/∂W_i, ḡ_i) )              β = 0.03

over the four transposed convolutions ``W_i`` of the decoder, where ``ḡ_i`` is the running mean of the
gradients of ``W_i`` over all past training steps (``ḡ_i = (1/k) Σ_{t≤k} ∇_{W_i} L_t``, the gradient of the
whole loss after ``backward()``, as the release's ``AverageMeter`` keeps it). The first step has no history
and trains on the MSE alone.

Scoring one image ``x`` (higher = more normal):

    score(x) = −MSE(x) + γ · mean_i cos(∂MSE(x)/∂W_i, ḡ_i)             γ = 0.12

(the release weights the two terms differently in training and scoring). With ``β = γ = 0`` this is the
plain reconstruction-error autoencoder, GradCON's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gradtrust.errors import InputError
from gradtrust.estimator import Estimator, check_int, check_number
from gradtrust.gradcon.gradients import cosine, per_sample_terms
from gradtrust.gradcon.inputs import collect_images
from gradtrust.gradcon.model import WORKING_SIZE, GradConAE, to_working_size

__all__ = ["GradCON", "GradConScores"]


@dataclass
class GradConScores:
    """Per-image terms of the GradCON score (NumPy float64): ``score = −mse + γ · cos.mean(axis=1)`` (higher =
    more normal); ``mse``: reconstruction error, mean over the pixels of the 28x28 working-size image; ``cos``
    ``(N, 4)``: cosine between the image's decoder-weight gradient and the training mean ``ḡ_i``."""

    score: np.ndarray
    mse: np.ndarray
    cos: np.ndarray
    gamma: float

    @property
    def gradient_term(self) -> np.ndarray:
        """``mean_i cos_i`` per image."""
        return self.cos.mean(axis=1)


class GradCON(Estimator):
    """One-class anomaly detector: a convolutional autoencoder trained with a gradient constraint.

    ``beta``: weight of the gradient-alignment loss in training (0 = plain autoencoder); ``gamma``: weight of
    the gradient cosine in the score (0 = reconstruction error); ``beta``, ``gamma``, ``batch_size`` and ``lr``
    default to the release's. ``seed`` seeds the initialisation and the shuffling (the global RNG is left as
    it was); ``chunk_size``: images per batched per-sample-gradient call when scoring (~0.5 MB per image).

    >>> det = GradCON(epochs=20).fit(inlier_images)          # (N, C, H, W) in [0, 1], or a DataLoader
    >>> det.score_samples(test_images)                       # (M,) float64, higher = more normal
    >>> det.save("model/"); GradCON.load("model/")

    Fitted attributes: ``model_`` (:class:`GradConAE`), ``reference_`` (the ``ḡ_i``), ``steps_`` (training
    steps the running mean covers), ``in_channels_``, ``input_size_`` (the training images' ``(H, W)``),
    ``n_train_``, ``history_`` (mean loss, MSE and gradient loss per epoch).
    """

    format_name = "gradtrust.gradcon"
    format_version = 2
    fitted_attribute = "model_"
    fit_call = "fit(inlier_images)"
    saved_by = "fitted GradCON autoencoder (GradCON.save or `gradtrust gradcon fit --out`)"
    unsaved_params = ("progress",)

    def __init__(self, beta: float = 0.03, gamma: float = 0.12, *, epochs: int = 20, batch_size: int = 64,
                 lr: float = 1e-3, seed: int = 0, device: str | torch.device = "cpu", chunk_size: int = 128,
                 progress: bool = False) -> None:
        self.beta, self.gamma, self.epochs, self.batch_size, self.lr = beta, gamma, epochs, batch_size, lr
        self.seed, self.device, self.chunk_size, self.progress = seed, device, chunk_size, progress

    def _torch_device(self) -> torch.device:
        """``device`` checked: known to torch, able to hold data, available here (load calls it too)."""
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"unknown device {self.device!r}: {exc}") from None
        if device.type == "meta":
            raise InputError("device='meta' holds no data to train or score on; use device='cpu' or 'cuda'")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device='cuda' was asked for but CUDA is not available here; use device='cpu'")
        return device

    def _check_params(self) -> torch.device:
        check_number("beta", self.beta), check_number("gamma", self.gamma), check_number("lr", self.lr, strict=True)
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("chunk_size", 1), ("seed", 0)):
            check_int(name, getattr(self, name), minimum)
        return self._torch_device()

    # ------------------------------------------------------------------------------------------- training

    def fit(self, data: Any) -> GradCON:
        """Train on inlier images only (a tensor ``(N, C, H, W)`` in ``[0, 1]``, a list of images or a
        ``DataLoader``; all are collected, resized to 28x28 and kept in memory). Returns ``self``. An
        ``InputError`` before training starts for fewer than 2 images, mixed sizes, values outside ``[0, 1]``…
        """
        device = self._check_params()
        images = collect_images(data, "training images")
        if images.shape[0] < 2:
            raise InputError(f"GradCON needs at least 2 inlier images to fit, got {images.shape[0]}: one image "
                             "gives no notion of normal variation (and no running mean of gradients to speak of)")
        self.metadata_ = {}
        self.in_channels_ = int(images.shape[1])
        self.input_size_ = (int(images.shape[2]), int(images.shape[3]))
        self.n_train_ = int(images.shape[0])
        x_all = to_working_size(images.to(device, torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = GradConAE(self.in_channels_).to(device)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        layers = model.decoder_layers
        sums = [torch.zeros_like(m.weight, dtype=torch.float64) for m in layers]
        reference = [torch.zeros_like(m.weight) for m in layers]
        steps = 0
        self.history_ = []
        model.train()
        bar = _progress(self.epochs, self.progress, "GradCON fit")
        for _ in range(self.epochs):
            order = torch.randperm(x_all.shape[0], generator=generator).to(device)
            totals = np.zeros(3)
            for start in range(0, x_all.shape[0], self.batch_size):
                x = x_all[order[start:start + self.batch_size]]
                mse = F.mse_loss(model(x), x)
                grad_loss = torch.zeros((), device=device)
                if self.beta > 0 and steps > 0:
                    grads = torch.autograd.grad(mse, [m.weight for m in layers], create_graph=True)
                    grad_loss = -torch.stack([cosine(g.unsqueeze(0), r)[0] for g, r in zip(grads, reference,
                                                                                           strict=True)]).mean()
                loss = mse + self.beta * grad_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                steps += 1
                for s, r, m in zip(sums, reference, layers, strict=True):
                    g = m.weight.grad
                    assert g is not None
                    s += g.detach().double()
                    r.copy_(s / steps)
                optimizer.step()
                totals += x.shape[0] * np.array([loss.item(), mse.item(), grad_loss.item()])
            totals /= x_all.shape[0]
            self.history_.append({"loss": float(totals[0]), "mse": float(totals[1]), "grad_loss": float(totals[2])})
            bar.update(1)
            bar.set_postfix(mse=f"{totals[1]:.4g}")
        bar.close()
        self.model_ = model.eval().requires_grad_(False)
        self.reference_ = [r.detach() for r in reference]
        self.steps_ = steps
        return self

    # ------------------------------------------------------------------------------------------- scoring

    def _prepare(self, data: Any) -> torch.Tensor:
        model = self.check_fitted()
        device = self._check_params()
        images = collect_images(data)
        if images.shape[1] != model.in_channels:
            raise InputError(f"the model was fitted on {model.in_channels}-channel images, these have "
                             f"{images.shape[1]} channels: convert them (grey ↔ RGB) first")
        return to_working_size(images.to(device, torch.float32))

    def score_terms(self, data: Any, gamma: float | None = None) -> GradConScores:
        """The score and its two terms per image (see :class:`GradConScores`); ``gamma`` overrides
        ``self.gamma`` for this call. Batched per-sample decoder gradients (no loop over images)."""
        model = self.check_fitted()
        x = self._prepare(data)
        g = float(self.gamma) if gamma is None else check_number("gamma", gamma)
        names = model.decoder_weight_names
        mses, coss = [], []
        # Chunk here too, so that the progress bar moves; per_sample_terms chunks within.
        bar = _progress(x.shape[0], self.progress, "GradCON score")
        step = self.chunk_size * 8
        for start in range(0, x.shape[0], step):
            mse, cos = per_sample_terms(model, x[start:start + step], self.reference_, names,
                                        chunk_size=self.chunk_size)
            mses.append(mse.double().cpu())
            coss.append(cos.double().cpu())
            bar.update(min(step, x.shape[0] - start))
        bar.close()
        mse_np = torch.cat(mses).numpy()
        cos_np = torch.cat(coss).numpy()
        return GradConScores(score=-mse_np + g * cos_np.mean(axis=1), mse=mse_np, cos=cos_np, gamma=g)

    def score_samples(self, data: Any) -> np.ndarray:
        """``−MSE(x) + γ · mean_i cos(∂MSE(x)/∂W_i, ḡ_i)`` per image, float64 ``(N,)``; higher = more normal."""
        return self.score_terms(data).score

    score = score_samples  # the old name, kept for one release

    def reconstruct(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, reconstructions)``, both at the 28x28 working size, on the CPU."""
        model = self.check_fitted()
        x = self._prepare(data)
        with torch.no_grad():
            recon = torch.cat([model(x[s:s + self.chunk_size]) for s in range(0, x.shape[0], self.chunk_size)])
        return x.cpu(), recon.cpu()

    # ------------------------------------------------------------------------------------------- storage

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Training facts; the autoencoder's weights and the ``ḡ_i`` as ``reference.<i>``."""
        tensors = dict(self.model_.state_dict())
        tensors.update({f"reference.{i}": r for i, r in enumerate(self.reference_)})
        state = {"in_channels": self.in_channels_, "input_size": list(self.input_size_), "working_size": WORKING_SIZE,
                 "n_train": self.n_train_, "steps": self.steps_, "history": self.history_}
        return state, {k: v.detach().cpu().numpy() for k, v in tensors.items()}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        device = self._torch_device()
        model = GradConAE(int(state["in_channels"]))
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()
                               if not k.startswith("reference.")})
        self.model_ = model.to(device).eval().requires_grad_(False)
        self.reference_ = [torch.from_numpy(arrays[f"reference.{i}"].copy()).to(device)
                           for i in range(len(model.decoder_layers))]
        self.in_channels_ = int(state["in_channels"])
        self.input_size_ = (int(state["input_size"][0]), int(state["input_size"][1]))
        self.n_train_, self.steps_ = int(state["n_train"]), int(state["steps"])
        self.history_ = list(state["history"])


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A progress bar (a silent one when not ``enabled``, as everywhere in gradtrust: ``tqdm(disable=…)``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled)

