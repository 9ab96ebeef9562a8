"""The CIFAR networks of the two widely used checkpoint collections, with their parameter names, so that the
published state dicts load strictly (:mod:`gradtrust.models.cifar_zoo` lists the checkpoints).

* :class:`ZeroPadResNet` — He et al. 2016 (§4.2, "Deep Residual Learning for Image Recognition") CIFAR ResNets
  with option-A shortcuts, as akamaster/pytorch_resnet_cifar10 names them: ``conv1``, ``bn1``,
  ``layer{1,2,3}.<i>.{conv1,bn1,conv2,bn2}``, ``linear`` (the shortcut has no parameters).
* :func:`conv_shortcut_resnet` — the same depths with 1×1-conv + BatchNorm shortcuts (torchvision's
  ``BasicBlock``: ``downsample.0``/``.1``), head ``fc``, as chenyaofo/pytorch-cifar-models names them.
* :class:`CifarVGG` — VGG-11/13/16/19 with BatchNorm and a 512-512-classes head (``features``, ``classifier``).
* :func:`cifar_mobilenet_v2`, :func:`cifar_shufflenet_v2` — torchvision's networks with the stride-2 stem
  (and ShuffleNet's max-pool) removed for 32×32 inputs, as chenyaofo's are.
* :class:`RepVGG` — RepVGG-A (Ding et al. 2021) in its training form (``rbr_dense``, ``rbr_1x1``,
  ``rbr_identity`` per block; ``stage0``…``stage4``, ``linear``), stem stride 1.

Every network ends in an ``nn.Linear`` producing the logits (the final layer the trust scores read).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CifarVGG",
    "RepVGG",
    "RepVGGBlock",
    "ZeroPadBlock",
    "ZeroPadResNet",
    "ZeroPadShortcut",
    "conv_shortcut_resnet",
    "cifar_mobilenet_v2",
    "cifar_shufflenet_v2",
    "VGG_LAYOUTS",
]


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. 2016 (§4.1): ``x[:, :, ::2, ::2]`` zero-padded with ``planes // 4`` channels on each
    side — the identity at half resolution with the new channels zero, no parameters."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class ZeroPadBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, 3×3 convolutions (He et al. 2016, §4.2)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = ZeroPadShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ZeroPadResNet(nn.Module):
    """The 6n+2-layer CIFAR ResNet of He et al. 2016 (§4.2): a 3×3 stem of 16 channels, three stages of ``n``
    blocks at 16, 32, 64 channels (stride 2 at the start of stages 2 and 3), global average pooling, ``linear``.
    ``n`` = 3, 5, 7, 9, 18 gives ResNet-20, 32, 44, 56, 110."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [
                ZeroPadBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                for i in range(blocks_per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class ConvShortcutResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 with projection shortcuts (a 1×1 convolution + BatchNorm where the
    shape changes; option B) and head ``fc``: torchvision's ``BasicBlock`` in three stages of 16/32/64 channels."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            blocks = [BasicBlock(in_planes, planes, stride, downsample)]
            blocks += [BasicBlock(planes, planes) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def conv_shortcut_resnet(blocks_per_stage: int, num_classes: int = 10) -> nn.Module:
    """A :class:`ConvShortcutResNet` with ``blocks_per_stage`` blocks per stage (3, 5, 7, 9: ResNet-20…56)."""
    return ConvShortcutResNet(blocks_per_stage, num_classes)


#: VGG's layouts (Simonyan & Zisserman 2015, Table 1: A, B, D, E): output channels of each 3×3 convolution,
#: ``"M"`` a 2×2 max-pool. Five pools take a 32×32 input to 1×1×512.
VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32×32 inputs: ``features`` (conv 3×3 + BN + ReLU, max-pools) then ``classifier``
    ``Linear(512, 512) → ReLU → Dropout → Linear(512, 512) → ReLU → Dropout → Linear(512, classes)``."""

    def __init__(self, layout: Sequence[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in layout:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def cifar_mobilenet_v2(width_mult: float, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 (Sandler et al. 2018) for 32×32 inputs: stride 1 in the stem and in the second
    bottleneck stage (``t=6, c=24, n=2, s=1``), as chenyaofo/pytorch-cifar-models trains it."""
    from torchvision.models import MobileNetV2

    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=setting)
    model.features[0][0].stride = (1, 1)
    return model


def cifar_shufflenet_v2(stage_channels: Sequence[int], num_classes: int = 10) -> nn.Module:
    """torchvision's ShuffleNetV2 (Ma et al. 2018) for 32×32 inputs: stride 1 in the stem and no max-pool, stages
    of 4, 8, 4 units, as chenyaofo/pytorch-cifar-models trains it."""
    from torchvision.models import ShuffleNetV2

    model = ShuffleNetV2([4, 8, 4], list(stage_channels), num_classes=num_classes)
    model.conv1[0].stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False))
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


class RepVGGBlock(nn.Module):
    """RepVGG's training-time block (Ding et al. 2021, eq. 1–2): ``relu(bn(conv3×3 x) + bn(conv1×1 x) + bn(x))``,
    the identity branch only where the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.nonlinearity = nn.ReLU()
        self.rbr_identity = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        self.rbr_dense = _conv_bn(in_channels, out_channels, 3, stride)
        self.rbr_1x1 = _conv_bn(in_channels, out_channels, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)


class RepVGG(nn.Module):
    """RepVGG-A (Ding et al. 2021, Table 2): stages of 1, 2, 4, 14, 1 blocks at ``min(64, 64a)``, ``64a``, ``128a``,
    ``256a``, ``512b`` channels (stride 2 at stages 2–4; stride 1 at the stem and stage 1 for 32×32 inputs), global
    average pooling, ``linear``. A0: a=0.75, b=2.5; A1: a=1, b=2.5; A2: a=1.5, b=2.75."""

    def __init__(self, a: float, b: float, num_classes: int = 10) -> None:
        super().__init__()
        in_planes = min(64, int(64 * a))
        self.stage0 = RepVGGBlock(3, in_planes, stride=1)
        stages = []
        for planes, blocks, stride in (
            (int(64 * a), 2, 1),
            (int(128 * a), 4, 2),
            (int(256 * a), 14, 2),
            (int(512 * b), 1, 2),
        ):
            stage = []
            for i in range(blocks):
                stage.append(RepVGGBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(torch.flatten(self.gap(out), 1))
