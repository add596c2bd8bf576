#!/usr/bin/env python3
"""PyTorch reference numbers for cnnkit's layers and losses: forward and every gradient.

Set-up (once, ~6 GB): python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch
Run from the repository root:  /tmp/ref/bin/python tools/gen_layer_fixtures.py
Writes tests/fixtures/layers.safetensors and tests/fixtures/losses.safetensors, read by
crates/cnnkit-nn/tests/layer_fixtures.rs. Each case stores, under "<case>.": x (input),
param.<name> / buffer.<name> (state_dict before forward), y (output), gy (cotangent),
gx (input gradient), grad.<name> (parameter gradients), after.<name> (buffers after forward);
its configuration is JSON in the file's metadata under the case name. Deterministic."""
import json
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(0)
torch.set_num_threads(1)
tensors, meta = {}, {}


def randomize(m):
    # Seeded, non-default values for every parameter and buffer, so loading is exercised.
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if n.endswith("weight") and p.dim() == 1 else 0.0))
        for n, b in m.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif n.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


def layer(name, cfg, module, x, train=True):
    randomize(module)
    module.train(train)
    for n, t in module.state_dict().items():
        tensors[f"{name}.{'param' if n in dict(module.named_parameters()) else 'buffer'}.{n}"] = t.detach().clone().contiguous()
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    # .clone(): views (Flatten) would otherwise share memory, which safetensors refuses.
    tensors[f"{name}.x"] = x.detach().clone().contiguous()
    tensors[f"{name}.y"] = y.detach().clone().contiguous()
    tensors[f"{name}.gy"] = gy.clone().contiguous()
    tensors[f"{name}.gx"] = x.grad.clone().contiguous()
    for n, p in module.named_parameters():
        tensors[f"{name}.grad.{n}"] = p.grad.contiguous()
    for n, b in module.named_buffers():
        tensors[f"{name}.after.{n}"] = b.detach().clone().contiguous()
    meta[name] = json.dumps(dict(cfg, train=train))


r = torch.randn
L = "layer"
# Convolutions: strides, paddings ('same' and padding modes), dilations, groups, depthwise, odd sizes.
conv_cases = [
    dict(cin=3, cout=4, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 3, 7, 6]),
    dict(cin=2, cout=3, k=3, stride=2, padding=0, dilation=1, groups=1, bias=False, mode="zeros", shape=[1, 2, 9, 8]),
    dict(cin=4, cout=6, k=3, stride=1, padding=2, dilation=2, groups=2, bias=True, mode="zeros", shape=[2, 4, 8, 8]),
    dict(cin=4, cout=4, k=3, stride=2, padding=1, dilation=1, groups=4, bias=True, mode="zeros", shape=[2, 4, 9, 9]),
    dict(cin=3, cout=5, k=1, stride=1, padding=0, dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 3, 5, 5]),
    dict(cin=3, cout=2, k=4, stride=1, padding="same", dilation=1, groups=1, bias=True, mode="zeros", shape=[1, 3, 6, 7]),
    dict(cin=2, cout=3, k=3, stride=1, padding="same", dilation=2, groups=1, bias=True, mode="reflect", shape=[2, 2, 7, 7]),
    dict(cin=2, cout=3, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, mode="reflect", shape=[1, 2, 5, 6]),
    dict(cin=2, cout=3, k=3, stride=2, padding=1, dilation=1, groups=1, bias=True, mode="replicate", shape=[1, 2, 6, 5]),
    dict(cin=2, cout=2, k=3, stride=1, padding=2, dilation=1, groups=1, bias=False, mode="circular", shape=[2, 2, 5, 5]),
]
for i, c in enumerate(conv_cases):
    m = nn.Conv2d(c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"], bias=c["bias"], padding_mode=c["mode"])
    layer(f"conv2d_{i}", dict(c, kind="conv2d"), m, r(*c["shape"]))
layer("conv1d_0", dict(kind="conv1d", cin=3, cout=4, k=3, stride=2, padding=1, dilation=1, groups=1, bias=True), nn.Conv1d(3, 4, 3, stride=2, padding=1), r(2, 3, 11))
layer("conv1d_1", dict(kind="conv1d", cin=4, cout=4, k=3, stride=1, padding=2, dilation=2, groups=2, bias=False), nn.Conv1d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False), r(1, 4, 9))
for i, c in enumerate([
    dict(cin=3, cout=2, k=3, stride=2, padding=1, output_padding=1, groups=1, dilation=1, bias=True, shape=[2, 3, 4, 5]),
    dict(cin=4, cout=6, k=2, stride=2, padding=0, output_padding=0, groups=2, dilation=1, bias=True, shape=[1, 4, 3, 3]),
    dict(cin=2, cout=2, k=3, stride=1, padding=1, output_padding=0, groups=1, dilation=2, bias=False, shape=[2, 2, 5, 4]),
]):
    m = nn.ConvTranspose2d(c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"], output_padding=c["output_padding"], groups=c["groups"], bias=c["bias"], dilation=c["dilation"])
    layer(f"convtranspose2d_{i}", dict(c, kind="convtranspose2d"), m, r(*c["shape"]))
# Pooling.
for i, c in enumerate([
    dict(k=2, stride=2, padding=0, dilation=1, ceil=False, shape=[2, 3, 8, 8]),
    dict(k=3, stride=2, padding=1, dilation=1, ceil=True, shape=[1, 2, 9, 10]),
    dict(k=3, stride=1, padding=1, dilation=2, ceil=False, shape=[2, 2, 7, 7]),
    dict(k=2, stride=2, padding=0, dilation=1, ceil=True, shape=[1, 2, 7, 5]),
]):
    layer(f"maxpool2d_{i}", dict(c, kind="maxpool2d"), nn.MaxPool2d(c["k"], c["stride"], c["padding"], c["dilation"], ceil_mode=c["ceil"]), r(*c["shape"]))
for i, c in enumerate([
    dict(k=2, stride=2, padding=0, ceil=False, count_include_pad=True, shape=[2, 3, 8, 8]),
    dict(k=3, stride=2, padding=1, ceil=True, count_include_pad=False, shape=[1, 2, 9, 10]),
    dict(k=3, stride=2, padding=1, ceil=True, count_include_pad=True, shape=[1, 2, 8, 7]),
]):
    layer(f"avgpool2d_{i}", dict(c, kind="avgpool2d"), nn.AvgPool2d(c["k"], c["stride"], c["padding"], ceil_mode=c["ceil"], count_include_pad=c["count_include_pad"]), r(*c["shape"]))
layer("adaptiveavgpool2d_0", dict(kind="adaptiveavgpool2d", out=[3, 2]), nn.AdaptiveAvgPool2d((3, 2)), r(2, 3, 7, 5))
layer("adaptiveavgpool2d_1", dict(kind="adaptiveavgpool2d", out=[1, 1]), nn.AdaptiveAvgPool2d(1), r(2, 3, 4, 4))
layer("adaptivemaxpool2d_0", dict(kind="adaptivemaxpool2d", out=[3, 2]), nn.AdaptiveMaxPool2d((3, 2)), r(2, 3, 7, 5))
# Linear, norms.
layer("linear_0", dict(kind="linear", fin=5, fout=3, bias=True), nn.Linear(5, 3), r(4, 5))
layer("linear_1", dict(kind="linear", fin=4, fout=2, bias=False), nn.Linear(4, 2, bias=False), r(2, 3, 4))
for train in (True, False):
    t = "train" if train else "eval"
    layer(f"batchnorm2d_{t}", dict(kind="batchnorm2d", c=3, momentum=0.1, eps=1e-5, affine=True), nn.BatchNorm2d(3), r(4, 3, 3, 5), train)
    layer(f"batchnorm1d_{t}", dict(kind="batchnorm1d", c=4, momentum=0.3, eps=1e-3, affine=True), nn.BatchNorm1d(4, eps=1e-3, momentum=0.3), r(6, 4), train)
    layer(f"batchnorm1d_3d_{t}", dict(kind="batchnorm1d", c=3, momentum=0.1, eps=1e-5, affine=False), nn.BatchNorm1d(3, affine=False), r(4, 3, 5), train)
layer("groupnorm_0", dict(kind="groupnorm", groups=2, c=6, eps=1e-5, affine=True), nn.GroupNorm(2, 6), r(2, 6, 3, 4))
layer("groupnorm_1", dict(kind="groupnorm", groups=3, c=3, eps=1e-4, affine=False), nn.GroupNorm(3, 3, eps=1e-4, affine=False), r(2, 3, 5))
layer("layernorm_0", dict(kind="layernorm", shape=[4], eps=1e-5, affine=True), nn.LayerNorm(4), r(3, 5, 4))
layer("layernorm_1", dict(kind="layernorm", shape=[3, 4], eps=1e-5, affine=True), nn.LayerNorm([3, 4]), r(2, 3, 4))
layer("instancenorm2d_0", dict(kind="instancenorm2d", c=3, affine=False, track=False), nn.InstanceNorm2d(3), r(2, 3, 4, 5))
layer("instancenorm2d_1", dict(kind="instancenorm2d", c=3, affine=True, track=True), nn.InstanceNorm2d(3, affine=True, track_running_stats=True), r(2, 3, 4, 5))
# Activations (inputs kept off the kinks at 0 and ±3 where subgradients differ by convention).
act = r(3, 4, 5)
act = act + 0.05 * torch.sign(act)
for kind, m in [("relu", nn.ReLU()), ("relu6", nn.ReLU6()), ("leakyrelu", nn.LeakyReLU(0.2)), ("elu", nn.ELU(0.7)), ("selu", nn.SELU()),
                ("gelu", nn.GELU()), ("gelu_tanh", nn.GELU(approximate="tanh")), ("silu", nn.SiLU()), ("mish", nn.Mish()),
                ("hardswish", nn.Hardswish()), ("hardsigmoid", nn.Hardsigmoid()), ("sigmoid", nn.Sigmoid()), ("tanh", nn.Tanh()),
                ("softmax", nn.Softmax(dim=1)), ("logsoftmax", nn.LogSoftmax(dim=-1)), ("flatten", nn.Flatten())]:
    layer(f"act_{kind}", dict(kind=kind), m, act * 3.0)
layer("prelu_1", dict(kind="prelu", n=1), nn.PReLU(), r(2, 3, 4))
layer("prelu_c", dict(kind="prelu", n=3), nn.PReLU(3), r(2, 3, 4))
# Resampling.
layer("upsample_nearest", dict(kind="upsample", size=[7, 9], mode="nearest", align_corners=False), nn.Upsample(size=(7, 9), mode="nearest"), r(2, 3, 3, 4))
layer("upsample_nearest2x", dict(kind="upsample", size=[6, 8], mode="nearest", align_corners=False), nn.Upsample(scale_factor=2, mode="nearest"), r(1, 2, 3, 4))
layer("upsample_bilinear", dict(kind="upsample", size=[7, 9], mode="bilinear", align_corners=False), nn.Upsample(size=(7, 9), mode="bilinear", align_corners=False), r(2, 3, 3, 4))
layer("upsample_bilinear_ac", dict(kind="upsample", size=[7, 9], mode="bilinear", align_corners=True), nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True), r(2, 3, 3, 4))
layer("upsample_bilinear_down", dict(kind="upsample", size=[3, 2], mode="bilinear", align_corners=False), nn.Upsample(size=(3, 2), mode="bilinear"), r(1, 2, 7, 5))
layer("pixelshuffle", dict(kind="pixelshuffle", r=2), nn.PixelShuffle(2), r(2, 8, 3, 4))
layer("channelshuffle", dict(kind="channelshuffle", groups=3), nn.ChannelShuffle(3), r(2, 6, 3, 4))
layer("zeropad2d", dict(kind="zeropad2d", pad=[1, 2, 0, 3]), nn.ZeroPad2d((1, 2, 0, 3)), r(2, 3, 4, 5))
save_file(tensors, "tests/fixtures/layers.safetensors", metadata=meta)

# Losses: forward and input gradient (backward of the scalar, or with a cotangent for 'none').
tensors, meta = {}, {}


def loss_case(name, cfg, fn, x, target, extra=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, target)
    gy = torch.randn_like(out) if out.dim() > 0 else torch.tensor(1.0)
    out.backward(gy)
    tensors[f"{name}.x"] = x.detach().clone().contiguous()
    tensors[f"{name}.target"] = target.clone().contiguous()
    tensors[f"{name}.y"] = out.detach().reshape(-1).contiguous() if out.dim() == 0 else out.detach().contiguous()
    tensors[f"{name}.gy"] = gy.reshape(-1).contiguous() if out.dim() == 0 else gy.contiguous()
    tensors[f"{name}.gx"] = x.grad.clone().contiguous()
    for k, v in (extra or {}).items():
        tensors[f"{name}.{k}"] = v.clone().contiguous()
    meta[name] = json.dumps(cfg)


logits, labels = r(6, 5), torch.tensor([0, 3, 4, 1, 3, 2])
w = torch.rand(5) + 0.5
for red in ("mean", "sum", "none"):
    loss_case(f"ce_{red}", dict(kind="ce", reduction=red), lambda x, t: F.cross_entropy(x, t, reduction=red), logits, labels)
loss_case("ce_weight", dict(kind="ce", reduction="mean", weight=True), lambda x, t: F.cross_entropy(x, t, weight=w), logits, labels, {"weight": w})
ign = torch.tensor([0, -100, 4, 1, -100, 2])
loss_case("ce_ignore", dict(kind="ce", reduction="mean", weight=True), lambda x, t: F.cross_entropy(x, t, weight=w), logits, ign, {"weight": w})
loss_case("ce_smooth", dict(kind="ce", reduction="mean", label_smoothing=0.1), lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), logits, labels)
loss_case("ce_smooth_weight_ignore", dict(kind="ce", reduction="mean", weight=True, label_smoothing=0.2), lambda x, t: F.cross_entropy(x, t, weight=w, label_smoothing=0.2), logits, ign, {"weight": w})
loss_case("ce_smooth_sum", dict(kind="ce", reduction="sum", label_smoothing=0.3), lambda x, t: F.cross_entropy(x, t, label_smoothing=0.3, reduction="sum"), logits, labels)
probs = torch.softmax(r(6, 5), 1)
loss_case("ce_probs", dict(kind="ce", reduction="mean"), lambda x, t: F.cross_entropy(x, t), logits, probs)
loss_case("ce_probs_smooth_weight", dict(kind="ce", reduction="mean", weight=True, label_smoothing=0.1), lambda x, t: F.cross_entropy(x, t, weight=w, label_smoothing=0.1), logits, probs, {"weight": w})
loss_case("ce_2d", dict(kind="ce", reduction="mean"), lambda x, t: F.cross_entropy(x, t), r(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5)))
loss_case("nll", dict(kind="nll", reduction="mean", weight=True), lambda x, t: F.nll_loss(x, t, weight=w), torch.log_softmax(logits, 1), labels, {"weight": w})
p, yb = torch.rand(4, 3) * 0.9 + 0.05, (torch.rand(4, 3) > 0.5).float()
bw = torch.rand(3) + 0.5
loss_case("bce", dict(kind="bce", reduction="mean"), lambda x, t: F.binary_cross_entropy(x, t), p, yb)
loss_case("bce_weight_sum", dict(kind="bce", reduction="sum", weight=True), lambda x, t: F.binary_cross_entropy(x, t, weight=bw, reduction="sum"), p, yb, {"weight": bw})
loss_case("bce_logits", dict(kind="bce_logits", reduction="mean"), lambda x, t: F.binary_cross_entropy_with_logits(x, t), r(4, 3) * 3, yb)
loss_case("bce_logits_pw", dict(kind="bce_logits", reduction="mean", weight=True, pos_weight=True), lambda x, t: F.binary_cross_entropy_with_logits(x, t, weight=bw, pos_weight=bw * 2), r(4, 3) * 3, yb, {"weight": bw, "pos_weight": bw * 2})
a, b = r(3, 4), r(3, 4)
for red in ("mean", "sum", "none"):
    loss_case(f"mse_{red}", dict(kind="mse", reduction=red), lambda x, t: F.mse_loss(x, t, reduction=red), a, b)
loss_case("l1", dict(kind="l1", reduction="mean"), lambda x, t: F.l1_loss(x, t), a, b)
loss_case("smooth_l1", dict(kind="smooth_l1", reduction="mean", beta=0.5), lambda x, t: F.smooth_l1_loss(x, t, beta=0.5), a * 2, b)
loss_case("huber", dict(kind="huber", reduction="sum", delta=0.7), lambda x, t: F.huber_loss(x, t, delta=0.7, reduction="sum"), a * 2, b)
lp, tp = torch.log_softmax(r(4, 5), 1), torch.softmax(r(4, 5), 1)
loss_case("kl_batchmean", dict(kind="kl", reduction="batchmean", log_target=False), lambda x, t: F.kl_div(x, t, reduction="batchmean"), lp, tp)
loss_case("kl_log_target", dict(kind="kl", reduction="sum", log_target=True), lambda x, t: F.kl_div(x, t, reduction="sum", log_target=True), lp, torch.log(tp))
save_file(tensors, "tests/fixtures/losses.safetensors", metadata=meta)
print("wrote tests/fixtures/layers.safetensors and losses.safetensors")
