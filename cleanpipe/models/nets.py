"""Network architectures: a small fast CNN, the 9-layer Co-teaching CNN, PreAct ResNet-18, an MLP."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def drop_path(branch: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero each example's residual branch with probability ``rate``, rescale the rest by 1/(1 - rate)."""
    if not training or rate <= 0.0:
        return branch
    keep = (torch.rand((branch.shape[0],) + (1,) * (branch.ndim - 1), device=branch.device) >= rate).to(branch.dtype)
    return branch * keep / (1.0 - rate)


class SkipBlock(nn.Module):
    """A residual block; ``drop_path`` (0 = off) is its stochastic-depth rate, used only where the skip is the identity."""

    drop_path: float = 0.0
    identity_skip: bool = False


class SmallCNN(nn.Module):
    """A small, fast CNN for digits (8x8) and 28x28 images.

    Three conv-BN-ReLU blocks of ``width, 2 width, 4 width`` channels, each but the first
    followed by 2x2 max-pooling once the map is larger than 4x4, then global max-pooling
    and a linear head. About 0.1M parameters at ``width=32``.
    """

    def __init__(self, in_channels: int, n_classes: int, size: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, width)]
        c, s = width, size
        for _ in range(2):
            if s > 4:  # pool before the wider conv: most of the cost sits at full resolution
                layers.append(nn.MaxPool2d(2))
                s //= 2
            layers.append(conv_bn(c, 2 * c))
            c *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.amax(x, dim=(2, 3)))


class CNN9(nn.Module):
    """The 9-layer CNN of Co-teaching (Han et al. 2018) for 32x32 images.

    3x(conv 128) - maxpool - dropout 0.25 - 3x(conv 256) - maxpool - dropout 0.25 -
    conv 512 (3x3 valid) - conv 256 (1x1) - conv 128 (1x1) - global average pool - linear,
    every conv followed by BatchNorm and LeakyReLU(0.01).
    """

    def __init__(self, in_channels: int, n_classes: int, dropout: float = 0.25) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, k: int = 3, pad: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, padding=pad), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.01)]

        self.features = nn.Sequential(
            *block(in_channels, 128), *block(128, 128), *block(128, 128),
            nn.MaxPool2d(2), nn.Dropout2d(dropout),
            *block(128, 256), *block(256, 256), *block(256, 256),
            nn.MaxPool2d(2), nn.Dropout2d(dropout),
            *block(256, 512, 3, 0), *block(512, 256, 1, 0), *block(256, 128, 1, 0),
        )
        self.head = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class PreActBlock(SkipBlock):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.identity_skip = stride == 1 and c_in == c_out
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return drop_path(out, self.drop_path, self.training) + skip


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al. 2016) for 32x32 images, the DivideMix-era standard."""

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        blocks, c = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [PreActBlock(c, c_out, stride), PreActBlock(c_out, c_out, 1)]
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    """A multilayer perceptron for tables, precomputed features, or images flattened to pixels.

    Inputs are standardised by the engine; an image batch (B, C, H, W) is flattened to
    (B, C*H*W), so ``in_features`` is the product of the input shape.
    """

    def __init__(self, in_features: int, n_classes: int, hidden: int = 256, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class BasicBlock(SkipBlock):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.identity_skip = stride == 1 and c_in == c_out
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(drop_path(self.bn2(self.conv2(out)), self.drop_path, self.training) + self.shortcut(x))


class ResNet32(nn.Module):
    """The CIFAR ResNet-32 INCV uses: a 16-channel stem, 3 stages of 5 basic blocks (16, 32, 64), GAP, linear."""

    def __init__(self, in_channels: int, n_classes: int, blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        layers, c = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(c, c_out, stride if b == 0 else 1))
                c = c_out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _pool_pad(x: torch.Tensor, stride: int, c_out: int) -> torch.Tensor:
    """WRN's parameter-free shortcut: average-pool by the stride, then zero-pad channels equally on both sides."""
    if stride > 1:
        x = nn.functional.avg_pool2d(x, stride, stride)
    extra = c_out - x.shape[1]
    if extra > 0:
        x = nn.functional.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
    return x


class WideBlock(SkipBlock):
    """A pre-activation WRN block: [BN-ReLU] conv3x3(stride) BN-ReLU conv3x3, plus the pooled, padded input."""

    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool = False) -> None:
        super().__init__()
        self.identity_skip = stride == 1 and c_in == c_out and not activate_before_residual
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.stride, self.c_out, self.activate_before_residual = stride, c_out, activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.bn1(x))
        skip = act if self.activate_before_residual else x
        out = self.conv2(torch.relu(self.bn2(self.conv1(act))))
        return drop_path(out, self.drop_path, self.training) + _pool_pad(skip, self.stride, self.c_out)


class WRN28(nn.Module):
    """WRN-28-10 as IEG uses it (the AutoAugment code's variant, which IEG's code uses).

    A 16-channel stem without BN; three stages of 4 pre-activation blocks, widths 16k (160, 320, 640 at
    k = 10), strides 1, 2, 2; parameter-free shortcuts (average pooling and zero channel padding, no 1x1
    convolutions); the stage input added again after each stage and the stem output after the last;
    BN-ReLU, global average pooling and a linear head. About 36.2M parameters at k = 10 with 10 classes.
    """

    def __init__(self, in_channels: int, n_classes: int, widen: int = 10, blocks_per_stage: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        stages, c = [], 16
        self.strides = (1, 2, 2)
        for i, stride in enumerate(self.strides):
            c_out = 16 * widen * 2**i
            blocks = [WideBlock(c, c_out, stride, activate_before_residual=(i == 0))]
            blocks += [WideBlock(c_out, c_out, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            c = c_out
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # N(0, sqrt(2 / (k k C_out)))
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
        bound = 1.0 / n_classes**0.5  # the reference scales by the output size
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = first = self.stem(x)
        for stage, stride in zip(self.stages, self.strides):
            out = stage(x)
            x = out + _pool_pad(x, stride, out.shape[1])
        x = x + _pool_pad(first, 4, x.shape[1])
        return self.head(torch.relu(self.bn(x)).mean(dim=(2, 3)))


class Bottleneck29(SkipBlock):
    """ResNet v2 bottleneck: [BN] conv1x1(stride) - BN-ReLU conv3x3 - BN-ReLU conv1x1(c_out), plus a shortcut.

    ``pre_bn`` False for the network's first block (its input is the stem's BN-ReLU output). As in the
    reference code, no ReLU precedes the first 1x1 conv.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int, project: bool, pre_bn: bool) -> None:
        super().__init__()
        self.bn_a = nn.BatchNorm2d(c_in) if pre_bn else nn.Identity()
        self.conv_a = nn.Conv2d(c_in, c_mid, 1, stride, bias=False)
        self.bn_b, self.conv_b = nn.BatchNorm2d(c_mid), nn.Conv2d(c_mid, c_mid, 3, 1, 1, bias=False)
        self.bn_c, self.conv_c = nn.BatchNorm2d(c_mid), nn.Conv2d(c_mid, c_out, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if project else nn.Identity()
        self.identity_skip = not project and stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_a(self.bn_a(x))
        out = self.conv_b(torch.relu(self.bn_b(out)))
        out = self.conv_c(torch.relu(self.bn_c(out)))
        return drop_path(out, self.drop_path, self.training) + self.shortcut(x)


class ResNet29(nn.Module):
    """ResNet-29 as IEG uses it (Keras' ResNet v2 CIFAR example, depth 9n+2 with n = 3).

    Stem conv3x3 16 - BN - ReLU; three stages of 3 bottleneck blocks (16 -> 64, 64 -> 128, 128 -> 256),
    the first block of stages 2 and 3 with stride 2 and every stage's first block with a 1x1 projection
    shortcut; BN-ReLU, average pooling and a linear head. Glorot-normal convolutions. About 0.84M parameters.
    """

    def __init__(self, in_channels: int, n_classes: int, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        blocks, c_in, c_mid = [], 16, 16
        for stage in range(3):
            c_out = c_mid * (4 if stage == 0 else 2)
            for b in range(blocks_per_stage):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(Bottleneck29(c_in, c_mid, c_out, stride, project=(b == 0), pre_bn=not (stage == 0 and b == 0)))
                c_in = c_out
            c_mid = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.head = nn.Linear(c_in, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3)))


class ConvGroup(nn.Module):
    """airbench's block: conv3x3 - maxpool 2 - BN - GELU - conv3x3 - BN - GELU (BatchNorm weights frozen at 1)."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1, self.bn2 = (frozen_scale_bn(c_out, bn_momentum) for _ in range(2))
        for conv in (self.conv1, self.conv2):  # identity on the first c_in channels: the block starts as a pass-through
            with torch.no_grad():
                nn.init.dirac_(conv.weight[: conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.gelu(self.bn1(nn.functional.max_pool2d(self.conv1(x), 2)))
        return nn.functional.gelu(self.bn2(self.conv2(x)))


def frozen_scale_bn(c: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (only the shift learns): one fewer thing for a short run to tune."""
    bn = nn.BatchNorm2d(c, momentum=momentum, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class AirbenchNet(nn.Module):
    """An airbench-class network for fast 32x32 training (after Keller Jordan's airbench94, from its paper).

    A frozen 2x2 patch-whitening convolution (``2 * 4 C`` filters: the eigenvectors of the training
    images' 2x2 patch covariance scaled by the inverse square root of their eigenvalues, and their
    negatives; set by :meth:`init_from_data` before training), GELU, three :class:`ConvGroup` blocks of
    ``widths`` channels, global max pooling and a bias-free linear head whose logits are scaled by
    ``logit_scale``. BatchNorm with frozen scales and torch momentum 0.4 (each batch weighs 0.4: airbench's
    "momentum 0.6" is the old statistics' share); the BatchNorm shifts learn ``bias_lr_scale`` times faster
    than the weights (:meth:`param_groups`). About 2M parameters at the default widths.
    """

    def __init__(self, in_channels: int, n_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 bn_momentum: float = 0.4, logit_scale: float = 1 / 9, bias_lr_scale: float = 64.0) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(in_channels, 8 * in_channels, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        blocks, c = [], 8 * in_channels
        for w in widths:
            blocks.append(ConvGroup(c, w, bn_momentum))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, n_classes, bias=False)
        self.logit_scale, self.bias_lr_scale = logit_scale, bias_lr_scale

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4, chunk: int = 500) -> None:
        """Whitening filters from normalised training images ``x`` (n, C, H, W): eigenvectors of the 2x2 patch covariance.

        The covariance is summed over ``chunk`` images at a time (float64), so 5,000 CIFAR images take
        about 40 MB beyond ``x`` rather than a float64 copy of every patch.
        """
        c = x.shape[1]
        cov = torch.zeros(c * 4, c * 4, dtype=torch.float64, device=x.device)
        count = 0
        for s in range(0, len(x), chunk):
            patches = x[s : s + chunk].float().unfold(2, 2, 1).unfold(3, 2, 1)  # (n, C, H-1, W-1, 2, 2)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4).double()
            cov += patches.T @ patches
            count += len(patches)
        cov /= max(count, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)  # largest first
        filters = filters.reshape(c * 4, c, 2, 2).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def param_groups(self) -> list[dict]:
        """The BatchNorm shifts at ``bias_lr_scale`` times the learning rate; the rest (the whitening bias too) at 1."""
        fast = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        ids = {id(p) for p in fast}
        return [{"params": fast, "lr_scale": self.bias_lr_scale},
                {"params": [p for p in self.parameters() if id(p) not in ids], "lr_scale": 1.0}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(nn.functional.gelu(self.whiten(x)))
        return self.head(torch.amax(x, dim=(2, 3))) * self.logit_scale
