"""The GradCON convolutional autoencoder (Kwon et al., "Backpropagated Gradient Representations for Anomaly
Detection", ECCV 2020; see ``docs/gradcon.md``).

Encoder: four ``Conv2d(kernel 4, stride 2, padding 2)`` + ReLU, channels 32-32-64-64. Decoder: the mirror,
four ``ConvTranspose2d(kernel 4, stride 2)`` with paddings 2, 1, 2, 1 (ReLU between, sigmoid at the end),
channels 64-32-32-C. On a 28x28 input the spatial sizes are 28 → 15 → 8 → 5 → 3 (encoder) and
3 → 4 → 8 → 14 → 28 (decoder), so the reconstruction has the input's size exactly. The paddings of the
decoder are those of the authors' release (``gradcon-anomaly/models.py``); with padding 2 everywhere the
decoder would return 18x18.

The network works at :data:`WORKING_SIZE` = 28 only, as the release does (it resizes CIFAR-10 to 28x28
before training). :func:`to_working_size` brings any other image size there (see ``docs/gradcon.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.estimator import check_int

__all__ = ["WORKING_SIZE", "GradConAE", "to_working_size"]

#: The image side the autoencoder reconstructs exactly (the release's 28x28).
WORKING_SIZE = 28


class GradConAE(nn.Module):
    """The GradCON convolutional autoencoder; ``forward(x)`` returns the reconstruction in ``(0, 1)``.

    ``decoder[0]``, ``decoder[2]``, ``decoder[4]``, ``decoder[6]`` are the transposed convolutions whose
    weight gradients GradCON constrains (:attr:`decoder_weight_names`).
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels = check_int("in_channels", in_channels)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=2), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=2), nn.ReLU(),  # 3 → 4
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # 4 → 8
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=2), nn.ReLU(),  # 8 → 14
            nn.ConvTranspose2d(32, in_channels, 4, stride=2, padding=1),    # 14 → 28
            nn.Sigmoid(),
        )

    @property
    def decoder_layers(self) -> list[nn.ConvTranspose2d]:
        """The four transposed convolutions of the decoder, first to last."""
        return [m for m in self.decoder if isinstance(m, nn.ConvTranspose2d)]

    @property
    def decoder_weight_names(self) -> list[str]:
        """Parameter names of the constrained weights (``decoder.0.weight`` … ``decoder.6.weight``)."""
        return [f"decoder.{i}.weight" for i, m in enumerate(self.decoder) if isinstance(m, nn.ConvTranspose2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def to_working_size(images: torch.Tensor, size: int = WORKING_SIZE) -> torch.Tensor:
    """Resize a batch ``(N, C, H, W)`` to ``size x size``; unchanged when it already is.

    Bilinear interpolation (``align_corners=False``), with antialiasing when shrinking (as the release's
    PIL ``ANTIALIAS`` resize of CIFAR-10 to 28x28). Both keep values inside ``[0, 1]`` (positive weights
    that sum to one), so the sigmoid decoder can still reconstruct them. Small images (the 8x8 digits) are
    enlarged; the reconstruction error is then measured at 28x28.
    """
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-2] > size or images.shape[-1] > size
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)
