"""Plain-PyTorch copy of torchvision's ResNet (torchvision/models/resnet.py, v0.2x).

Test and benchmark reference only: torchvision itself does not install beside the pinned
torch here. Module names, registration order, initialisation and forward arithmetic are
torchvision's (groups = 1, width_per_group = 64, no dilation, zero_init_residual = False),
so `state_dict()` keys, order and shapes are identical to torchvision.models.resnetXX.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


LAYERS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


def torch_resnet(arch: str, num_classes: int = 1000) -> ResNet:
    block, layers = LAYERS[arch]
    return ResNet(block, layers, num_classes)


def feature_map(model: nn.Module, x: Tensor) -> Tensor:
    """conv1 ... layer4 of this ResNet or of a torchvision one (same attribute names)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def pooled_features(model: nn.Module, x: Tensor, pooling: str) -> Tensor:
    """IDML-style pooling of the torch feature map: AdaptiveAvg, AdaptiveMax or their sum."""
    f = feature_map(model, x)
    avg = nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
    mx = nn.functional.adaptive_max_pool2d(f, 1).flatten(1)
    return {"avg": avg, "max": mx, "avg+max": avg + mx}[pooling]


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics (conv/fc keep torchvision init).

    Works on this ResNet and on torchvision's (blocks are found by their attributes).

    The running statistics are first calibrated on a random batch (a train-mode pass
    with cumulative averaging), as in a trained network, so activations keep unit scale
    through the depth; then each mean is shifted by 0.1 standard deviations times a
    standard normal and each variance multiplied by a factor in [0.8, 1.25). BN scales
    are drawn from [0.5, 1.5), except the last BN of each residual block, [0.1, 0.4) (small
    as in trained ResNets, which keeps the residual stream and float32 rounding at the
    scale of a pretrained network); BN and fc biases from N(0, 0.1^2).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    blocks = [b for b in model.modules() if hasattr(b, "downsample") and hasattr(b, "bn2")]
    last = {id(getattr(b, "bn3", b.bn2)) for b in blocks}
    for m in bns:
        c = m.num_features
        low, high = (0.1, 0.4) if id(m) in last else (0.5, 1.5)
        m.weight.copy_(low + (high - low) * torch.rand(c, generator=g))
        m.bias.copy_(0.1 * torch.randn(c, generator=g))
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(torch.randn(4, 3, 64, 64, generator=g).to(model.fc.weight.dtype))
    for m in bns:
        c = m.num_features
        m.momentum = 0.1
        m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=g))
        m.running_var.mul_(0.8 + 0.45 * torch.rand(c, generator=g))
        m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    model.fc.bias.copy_(0.1 * torch.randn(model.fc.out_features, generator=g))
    return model.eval()
