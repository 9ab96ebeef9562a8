"""Channel weights ``α_k = mean_{i,j} ∂S/∂A_k(i,j)`` of the three explanation objectives, for chosen classes or
for every class at once.

Objectives (Prabhushankar & AlRegib, "Explanatory Paradigms in Neural Networks", IEEE SPM 2022; Selvaraju et
al., Grad-CAM, ICCV 2017; see ``docs/explanations.md``):

* Grad-CAM / Counterfactual-CAM: ``S = z_P``, whose logit cotangent is ``e_P``;
* Contrast-CAM: ``S = CE(z, Q) = −log softmax(z)_Q``, whose logit cotangent is ``p − e_Q``.

**Closed form.** When the layer's activations ``A (K×h×w)`` are globally average-pooled and fed to a final
linear layer ``z = W·mean_{ij}A + b``, then ``∂z_c/∂A_k(i,j) = W_{c,k}/(h·w)``, hence
``α^{gradcam}_P = W_P/(h·w)`` and ``α^{contrast}_Q = (Wᵀp − W_Q)/(h·w)``: every class from the one forward
pass. The structure is *verified* on every batch — the head's output on the pooled activations must
reproduce the model's logits — never assumed from the module names.

**General path.** Otherwise ``α = mean_{ij} Jᵀv`` with ``J = ∂z/∂A`` and the cotangent ``v`` above; the
cotangents of many classes go through one batched (vmapped) backward
(``torch.autograd.grad(..., is_grads_batched=True)``), chunked so that memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from gradtrust.explanations.forward import Captured
from gradtrust.explanations.layers import LayerSpec

#: bytes one chunk of batched cotangent gradients may take (general path)
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype in (torch.float32, torch.float64) else 3e-2


def find_closed_form_head(module: nn.Module, spec: LayerSpec, cap: Captured) -> nn.Linear | None:
    """The ``nn.Linear`` that maps the layer's pooled activations to the logits, verified on this batch.

    A candidate (an ``nn.Linear`` with ``K`` inputs and ``C`` outputs that ran in the forward pass) is accepted
    when, on this batch, its input equals ``mean_{ij} A`` and its output equals the logits, each within
    ``10⁻³·(1 + max|·|)`` in float32 (``3·10⁻²`` in half precision): pooling order and rounding differ, the
    structure does not. Checking the input as well as the output keeps a degenerate head (zero weights, whose
    output is the bias whatever the input) from passing.
    """
    acts, logits = cap.activations, cap.logits.detach()
    k, c = acts.shape[1], logits.shape[1]
    if not torch.isfinite(logits).all():
        return None
    pooled = acts.float().flatten(2).mean(2)
    z = logits.float()
    tol = _tolerance(logits.dtype)
    names = ([spec.head] if spec.head in cap.linears else []) + [n for n in cap.linears if n != spec.head]
    for name in names:
        lin = module.get_submodule(name)
        seen_in, seen_out = cap.linears[name]
        if not isinstance(lin, nn.Linear) or lin.in_features != k or lin.out_features != c:
            continue
        if seen_in.shape != pooled.shape or seen_out.shape != z.shape:
            continue
        same_in = (seen_in.detach().float() - pooled).abs().max().item() <= tol * (1.0 + pooled.abs().max().item())
        same_out = (seen_out.detach().float() - z).abs().max().item() <= tol * (1.0 + z.abs().max().item())
        if same_in and same_out:
            return lin
    return None


class ChannelWeights:
    """``α`` for the captured batch: closed form when ``head`` is given, else batched autograd."""

    def __init__(self, cap: Captured, head: nn.Linear | None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 spec: LayerSpec | None = None):
        self.cap, self.head, self.spec, self.chunk_bytes = cap, head, spec, chunk_bytes
        acts = cap.activations
        self.batch, self.channels = acts.shape[0], acts.shape[1]
        self.positions = acts.shape[2:].numel()  # h·w (or t·h·w)
        self.num_classes = cap.logits.shape[1]
        self.probabilities = torch.softmax(cap.logits.detach().float(), dim=1)
        if head is not None:
            self._w = head.weight.detach().float()  # (C, K)
            self._wp = self.probabilities @ self._w  # Wᵀp per sample, (B, K)
        elif cap.leaf is None:
            raise ValueError("the general path needs a forward pass with a graph")

    @property
    def closed_form(self) -> bool:
        return self.head is not None

    # ------------------------------------------------------------------ objectives
    def gradcam(self, target: torch.Tensor) -> torch.Tensor:
        """``α`` of ``S = z_P`` (B, K) float32 (Counterfactual-CAM uses ``−α``)."""
        if self.head is not None:
            return self._w[target] / self.positions
        onehot = F.one_hot(target, self.num_classes).to(self.cap.logits.dtype)
        return self._vjp(onehot[None])[0]

    def contrast(self, contrast: torch.Tensor) -> torch.Tensor:
        """``α`` of ``S = CE(z, Q)`` (B, K) float32."""
        if self.head is not None:
            return (self._wp - self._w[contrast]) / self.positions
        v = self.probabilities - F.one_hot(contrast, self.num_classes).float()
        return self._vjp(v.to(self.cap.logits.dtype)[None])[0]

    def gradcam_and_contrast(self, target: torch.Tensor, contrast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both weights; on the general path from one batched backward over the two cotangents."""
        if self.head is not None:
            return self.gradcam(target), self.contrast(contrast)
        v = torch.stack([F.one_hot(target, self.num_classes).float(),
                         self.probabilities - F.one_hot(contrast, self.num_classes).float()])
        both = self._vjp(v.to(self.cap.logits.dtype))
        return both[0], both[1]

    def contrast_all(self, chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``α^{contrast}_Q`` for every class ``Q``, in chunks: yields ``(first class, (B, c, K))``.

        Closed form: ``(Wᵀp − W_Q)/(h·w)``. General path: ``Jᵀp − Jᵀe_Q``, with ``Jᵀp`` from one cotangent
        and the ``Jᵀe_Q`` of a chunk of classes from one batched backward.
        """
        c = self.num_classes
        size = chunk or self.class_chunk()
        if self.head is not None:
            for start in range(0, c, size):
                w = self._w[start:start + size]  # (c, K)
                yield start, (self._wp[:, None, :] - w[None]) / self.positions
            return
        g_p = self._vjp(self.probabilities.to(self.cap.logits.dtype)[None])[0]  # (B, K)
        eye = torch.eye(c, dtype=self.cap.logits.dtype, device=self.cap.logits.device)
        for start in range(0, c, size):
            rows = eye[start:start + size]  # (c, C)
            v = rows[:, None, :].expand(rows.shape[0], self.batch, c)
            g = self._vjp(v)  # (c, B, K)
            yield start, g_p[:, None, :] - g.transpose(0, 1)

    def class_chunk(self) -> int:
        """Classes per chunk: the closed form holds ``(B, c, K)`` weights plus ``(B, c, h·w)`` maps; the general
        path also one layer-sized gradient per class."""
        per_class = 4 * self.batch * (self.channels + self.positions)
        if self.head is None:
            assert self.cap.leaf is not None
            per_class += 3 * self.cap.leaf.numel() * self.cap.leaf.element_size()
        return int(max(1, min(self.num_classes, self.chunk_bytes // max(per_class, 1))))

    # ------------------------------------------------------------------ the batched backward
    def _vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """``mean_{ij} Jᵀv`` for ``m`` cotangents ``v`` (m, B, C) → (m, B, K) float32, one vmapped backward."""
        assert self.cap.leaf is not None and self.spec is not None
        leaf, logits = self.cap.leaf, self.cap.logits
        m = cotangents.shape[0]
        if m == 1:
            (grad,) = torch.autograd.grad(logits, leaf, cotangents[0], retain_graph=True)
            grads = grad[None]
        else:
            (grads,) = torch.autograd.grad(logits, leaf, cotangents, retain_graph=True, is_grads_batched=True)
        canonical = self.spec.canonical(grads.reshape(m * leaf.shape[0], *leaf.shape[1:]))
        return canonical.float().flatten(2).mean(2).reshape(m, leaf.shape[0], -1)
