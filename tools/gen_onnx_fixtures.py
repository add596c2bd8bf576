"""ONNX fixtures for cnnkit-onnx: small user CNNs exported by torch.onnx.export (TorchScript
exporter, dynamo=False) at opsets 11, 13, 17 and 18, plus each model's input and eval-mode
output in tests/fixtures/onnx/expected.safetensors.

Run: /tmp/ref/bin/python tools/gen_onnx_fixtures.py   (torch, onnx, safetensors)
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "onnx")
OPSETS = [11, 13, 17, 18]


class SE(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc(relu(fc(avgpool(x)))))."""

    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileNetish(nn.Module):
    """conv/bn/relu/maxpool, depthwise + hardswish, SE mul, adaptive pool, dropout, linear, softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.pw = nn.Conv2d(8, 16, 1)
        self.se = SE(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.se(F.relu6(self.pw(self.dw(self.stem(x)))))
        x = torch.flatten(self.pool(x), 1)
        return F.softmax(self.fc(self.drop(x)), dim=1)


def channel_shuffle(x, groups):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ResNetish(nn.Module):
    """Residual add, concat, channel shuffle via view/transpose, nearest and bilinear upsample,
    avg pool with padding, x.view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Conv2d(32, 8, 1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        r = F.relu(self.bn2(self.conv2(x)) + x)
        y = torch.cat([r, self.branch(r)], dim=1)
        y = channel_shuffle(y, 4)
        d = F.leaky_relu(self.down(y), 0.1)
        z = torch.cat([self.up(d), F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)], dim=1)
        z = self.pool(self.fuse(z))
        z = F.adaptive_avg_pool2d(z, (4, 4))
        return self.fc(z.view(z.size(0), -1))


class Misc(nn.Module):
    """ConvTranspose, pixel shuffle, zero pad, GELU (erf and tanh), SiLU, ELU, log_softmax,
    mean over dims, clamp."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.conv = nn.Conv2d(3, 8, 3, dilation=2)
        self.deconv = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.ps = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.mp = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = F.gelu(self.conv(self.pad(x)))
        x = F.silu(self.deconv(x))
        x = F.elu(self.conv2(self.ps(x)))
        x = F.gelu(self.mp(x), approximate="tanh").clamp(-0.5, 2.0)
        x = x.mean(dim=(2, 3))
        return F.log_softmax(self.fc(x), dim=-1)


def randomize_bn(m):
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.2)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    models = {
        "mobilenetish": (MobileNetish(), (2, 3, 32, 32)),
        "resnetish": (ResNetish(), (2, 3, 16, 16)),
        "misc": (Misc(), (2, 3, 12, 12)),
    }
    expected = {}
    for name, (m, shape) in models.items():
        randomize_bn(m)
        m.eval()
        x = torch.randn(*shape)
        with torch.no_grad():
            y = m(x)
        expected[f"{name}.input"] = x.contiguous()
        expected[f"{name}.output"] = y.contiguous()
        for opset in OPSETS:
            path = os.path.join(OUT, f"{name}_op{opset}.onnx")
            torch.onnx.export(
                m, (x,), path, dynamo=False, opset_version=opset, input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            )
    save_file(expected, os.path.join(OUT, "expected.safetensors"))


if __name__ == "__main__":
    main()
