"""CIFAR-style architectures of the CRD paper's table (RepDistiller), registered into timm.

After ``import kdzoo`` they are created like any timm model, e.g. ``timm.create_model("resnet8x4",
num_classes=100)``, and expose timm's interface (``feature_info``, ``forward_intermediates``,
``forward_head``), so every kdzoo method taps them without model-specific code.

* ResNets for CIFAR (He et al. 2016, section 4.2): 3x3 stem, three stages of basic blocks at
  strides 1/2/2, ``resnet20/56/110`` with 16/32/64 channels and ``resnet8x4/32x4`` with 4x wider
  stages (64/128/256 after a 32-channel stem), as in RepDistiller's ``resnet.py``.
* Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation basic blocks, ``wrn_<depth>_<k>``.
* MobileNetV2 as RepDistiller builds it for CIFAR: ``mobilenetv2_half_cifar`` (width 0.5, the
  table's "MobileNetV2").
* ShuffleNet V1 (groups 3) and V2 (size 1) for CIFAR: ``shufflenet_v1_cifar``, ``shufflenet_v2_cifar``.
* VGG with BatchNorm (Simonyan & Zisserman 2015, CIFAR variant): ``vgg8`` and ``vgg13_cifar``
  (timm's ``vgg13`` is the ImageNet network).

Parameter counts (100 classes) equal the reference definitions: resnet8x4 1.234 M, resnet32x4
7.434 M, resnet20 0.278 M, resnet56 0.862 M, resnet110 1.737 M, wrn_16_2 0.703 M, wrn_40_2 2.255 M,
wrn_40_1 0.570 M, vgg8 3.965 M, vgg13_cifar 9.462 M,
mobilenetv2_half_cifar 0.813 M, shufflenet_v1_cifar 0.949 M, shufflenet_v2_cifar 1.356 M.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import hookimpl


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class PreActBlock(nn.Module):
    """Wide ResNet block: BN-ReLU-conv twice, 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarNet(nn.Module):
    """A stem and stages (each a feature_info entry), then global pooling and a linear classifier."""

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        widths: list[int],
        strides: list[int],
        num_classes: int,
        final: nn.Module | None = None,
        head_width: int | None = None,
        stem_stride: int = 1,
    ):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.final = final or nn.Identity()  # WRN's last BN-ReLU, MobileNetV2's 1x1 conv to 1280
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = head_width or widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        reduction, self.feature_info = 1, []
        names = ["stem", *(f"stages.{i}" for i in range(len(stages)))]
        for name, width, stride in zip(names, widths, [stem_stride, *strides], strict=True):
            reduction *= stride
            self.feature_info.append({"num_chs": width, "reduction": reduction, "module": name})
        self.pretrained_cfg = {
            "architecture": "",
            "classifier": "fc",
            "num_classes": num_classes,
            "input_size": (3, 32, 32),
        }

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        n = len(self.feature_info)
        take = (
            list(range(n))
            if indices is None
            else (list(range(n - indices, n)) if isinstance(indices, int) else [i % n for i in indices])
        )
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        for i, stage in enumerate(self.stages, start=1):
            if stop_early and i > max(take):
                break
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return self.final(x), intermediates

    def forward_features(self, x: Tensor) -> Tensor:
        return self.final(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _stage(block: Callable[..., nn.Module], cin: int, cout: int, count: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*(block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(count)))


def cifar_resnet(depth: int, widths: list[int], num_classes: int = 100, in_chans: int = 3) -> CifarNet:
    n = (depth - 2) // 6
    stem = nn.Sequential(_conv3x3(in_chans, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    stages = [_stage(BasicBlock, widths[i], widths[i + 1], n, 1 if i == 0 else 2) for i in range(3)]
    return CifarNet(stem, stages, widths, [1, 2, 2], num_classes)


def wide_resnet(depth: int, k: int, num_classes: int = 100, in_chans: int = 3) -> CifarNet:
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    stages = [_stage(PreActBlock, widths[i], widths[i + 1], n, 1 if i == 0 else 2) for i in range(3)]
    final = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
    return CifarNet(_conv3x3(in_chans, 16), stages, widths, [1, 2, 2], num_classes, final)


def _vgg_block(cin: int, widths: list[int]) -> nn.Sequential:
    """3x3 conv + BN (+ ReLU between convs); the block's last ReLU is applied after it."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers)


def cifar_vgg(blocks: list[list[int]], num_classes: int = 100, in_chans: int = 3) -> CifarNet:
    """RepDistiller's VGG with BatchNorm: five blocks, max-pooling between the first four (at 32 px
    the fourth pool is skipped, as in the reference), global average pooling, one linear layer."""
    stem = _vgg_block(in_chans, blocks[0])
    stages = [
        nn.Sequential(*([nn.MaxPool2d(2, 2)] if i < 4 else []), _vgg_block(blocks[i - 1][-1], blocks[i]))
        for i in range(1, 5)
    ]
    widths = [b[-1] for b in blocks]
    return CifarNet(stem, stages, widths, [2, 2, 2, 1], num_classes)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block as in RepDistiller: 1x1 expansion (always), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.conv = nn.Sequential(
            *_conv_bn_relu(cin, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def cifar_mobilenetv2(width: float, expand: int = 6, num_classes: int = 100, in_chans: int = 3) -> CifarNet:
    """RepDistiller's MobileNetV2 (``mobile_half`` is width 0.5): features after the stem and after
    block groups 1, 2, 4 and 6, as its ``forward`` taps them."""
    setting = [
        (1, 16, 1, 1),
        (expand, 24, 2, 1),
        (expand, 32, 3, 2),
        (expand, 64, 4, 2),
        (expand, 96, 3, 1),
        (expand, 160, 3, 2),
        (expand, 320, 1, 1),
    ]  # (expansion, channels, blocks, stride)
    cin = int(32 * width)
    stem = nn.Sequential(*_conv_bn_relu(in_chans, cin, 3, 2))
    groups = []
    for t, c, n, s in setting:
        cout = int(c * width)
        groups.append([InvertedResidual(cin if i == 0 else cout, cout, s if i == 0 else 1, t) for i in range(n)])
        cin = cout
    tapped = [(0, 2), (2, 3), (3, 5), (5, 7)]  # block groups ending at a tapped feature
    stages = [nn.Sequential(*(block for group in groups[a:b] for block in group)) for a, b in tapped]
    widths = [int(32 * width), *(int(setting[b - 1][1] * width) for _, b in tapped)]
    strides = [max(setting[i][3] for i in range(a, b)) for a, b in tapped]
    final = nn.Sequential(*_conv_bn_relu(cin, 1280, 1))
    return CifarNet(stem, stages, widths, strides, num_classes, final, head_width=1280, stem_stride=2)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _bn(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels))


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates an
    average-pooled shortcut. The first unit after the 24-channel stem uses ungrouped 1x1s."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid, g = cout // 4, (1 if cin == 24 else groups)
        self.g, self.stride = g, stride
        self.conv1 = _bn(nn.Conv2d(cin, mid, 1, groups=g, bias=False))
        self.conv2 = _bn(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False))
        self.conv3 = _bn(nn.Conv2d(mid, cout, 1, groups=groups, bias=False))
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.conv1(x)), self.g)
        out = self.conv3(F.relu(self.conv2(out)))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


def cifar_shufflenet_v1(num_classes: int = 100, in_chans: int = 3) -> CifarNet:
    widths, blocks, groups = [240, 480, 960], [4, 8, 4], 3
    stem = nn.Sequential(_bn(nn.Conv2d(in_chans, 24, 1, bias=False)), nn.ReLU(inplace=True))
    stages, cin = [], 24
    for width, count in zip(widths, blocks, strict=True):
        units = [ShuffleV1Block(cin, width - cin, 2, groups)]  # the stride-2 unit concatenates its input
        units += [ShuffleV1Block(width, width, 1, groups) for _ in range(count - 1)]
        stages.append(nn.Sequential(*units))
        cin = width
    return CifarNet(stem, stages, [24, *widths], [2, 2, 2], num_classes)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit: split channels, transform one half (1x1, depthwise 3x3, 1x1), concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *_conv_bn_relu(half, half, 1),
            _bn(nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)),
            *_conv_bn_relu(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        return channel_shuffle(torch.cat([x[:, :half], self.branch(x[:, half:])], 1), 2)


class ShuffleV2Down(nn.Module):
    """ShuffleNetV2 stride-2 unit: two branches on the whole input, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(
            _bn(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)), *_conv_bn_relu(cin, mid, 1)
        )
        self.right = nn.Sequential(
            *_conv_bn_relu(cin, mid, 1),
            _bn(nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)),
            *_conv_bn_relu(mid, mid, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


def cifar_shufflenet_v2(num_classes: int = 100, in_chans: int = 3) -> CifarNet:
    widths, blocks = [116, 232, 464], [3, 7, 3]  # net size 1
    stem = nn.Sequential(*_conv_bn_relu(in_chans, 24, 1))
    stages, cin = [], 24
    for width, count in zip(widths, blocks, strict=True):
        stages.append(nn.Sequential(ShuffleV2Down(cin, width), *(ShuffleV2Block(width) for _ in range(count))))
        cin = width
    final = nn.Sequential(*_conv_bn_relu(cin, 1024, 1))
    return CifarNet(stem, stages, [24, *widths], [2, 2, 2], num_classes, final, head_width=1024)


ARCHITECTURES: dict[str, Callable[..., CifarNet]] = {
    "shufflenet_v1_cifar": cifar_shufflenet_v1,
    "shufflenet_v2_cifar": cifar_shufflenet_v2,
    "mobilenetv2_half_cifar": lambda **kw: cifar_mobilenetv2(0.5, **kw),
    "vgg8": lambda **kw: cifar_vgg([[64], [128], [256], [512], [512]], **kw),
    # timm's own "vgg13" is the ImageNet network; this is the CIFAR one of the CRD table
    "vgg13_cifar": lambda **kw: cifar_vgg([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], **kw),
    "resnet20": lambda **kw: cifar_resnet(20, [16, 16, 32, 64], **kw),
    "resnet56": lambda **kw: cifar_resnet(56, [16, 16, 32, 64], **kw),
    "resnet110": lambda **kw: cifar_resnet(110, [16, 16, 32, 64], **kw),
    "resnet8x4": lambda **kw: cifar_resnet(8, [32, 64, 128, 256], **kw),
    "resnet32x4": lambda **kw: cifar_resnet(32, [32, 64, 128, 256], **kw),
    "wrn_16_2": lambda **kw: wide_resnet(16, 2, **kw),
    "wrn_40_2": lambda **kw: wide_resnet(40, 2, **kw),
    "wrn_40_1": lambda **kw: wide_resnet(40, 1, **kw),
}


def _entrypoint(name: str, build: Callable[..., CifarNet]) -> Callable[..., CifarNet]:
    def create(pretrained: bool = False, **kwargs: object) -> CifarNet:
        if pretrained:
            raise ValueError(f"{name} has no published weights; train it, or pass a checkpoint")
        kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "in_chans")}
        model = build(**kwargs)
        model.pretrained_cfg["architecture"] = name
        model.default_cfg = model.pretrained_cfg
        return model

    create.__name__ = name
    create.__module__ = __name__
    return create


@hookimpl
def kdzoo_register_models(register):
    for name, build in ARCHITECTURES.items():
        register(_entrypoint(name, build))
