#!/usr/bin/env python3
"""PyTorch reference numbers for every cnnkit layer, op and loss: forward and every gradient.

Set-up (once, CPU torch is enough):
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch
Run from the repository root:
    /tmp/ref/bin/python tools/gen_fixtures.py
Writes tests/fixtures/torch_{layers,ops,losses}.safetensors, read by
crates/cnnkit-nn/tests/torch_fixtures.rs. The script only needs torch: it writes safetensors
itself, with sorted keys, so re-running it reproduces the files byte for byte.

Each case `<case>` (seeded from a CRC of its name, so adding a case never changes another) stores:
  <case>.x                  the input (float32; requires grad)
  <case>.param.<name>       layers: the whole state_dict (parameters AND buffers) before forward;
                            ops/losses: the other differentiable inputs (weight, bias, a 2nd operand, …)
  <case>.aux.<name>         non-differentiable inputs (class indices, gather indices, masks, class weights)
  <case>.y                  the output
  <case>.out.<name>         extra outputs compared exactly (max-pool indices)
  <case>.gy                 the random cotangent fed to backward (grad_output)
  <case>.gx                 the input gradient
  <case>.grad.<name>        the gradient of every parameter / differentiable input
  <case>.buffer_after.<name> buffers after forward (BatchNorm/InstanceNorm running stats)
and its configuration as JSON in the file's metadata under the case name.

Numerics: every stored input is a float32 value; torch computes the reference in float64 from those
exact values and the result is rounded to float32. So each stored number is the correctly rounded
answer to PyTorch's definition, and the test's tolerance (|a-b| <= 1e-5|b| + 1e-6, DESIGN.md) measures
cnnkit's own float32 rounding instead of the sum of two libraries' summation orders. (Index choices
that PyTorch makes in float32 even for float64 data, e.g. nearest-neighbour source indices, are the
same in both.) Inputs of piecewise functions are kept away from the kinks, where PyTorch picks a
subgradient by convention and a float32 round-off could flip the branch.
"""
import copy
import json
import struct
import sys
import warnings
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
warnings.filterwarnings("ignore")  # kl_div's reduction='mean' advice, conv's 'same' padding copy note
OUT = "tests/fixtures"


# ------------------------------------------------------------------------------- file writing
def write_safetensors(path, tensors, metadata):
    """Deterministic safetensors writer: tensors laid out in sorted-name order, sorted header."""
    dt = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": dt[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return off


class Group:
    def __init__(self, name):
        self.name, self.tensors, self.meta = name, {}, {}

    def put(self, case, key, t):
        t = t.detach()
        if t.is_floating_point():
            t = t.to(torch.float32)
        k = f"{case}.{key}"
        assert k not in self.tensors, k
        self.tensors[k] = t.clone().contiguous()

    def config(self, case, cfg):
        assert case not in self.meta, case
        self.meta[case] = json.dumps(cfg, sort_keys=True)

    def save(self):
        path = f"{OUT}/torch_{self.name}.safetensors"
        n = write_safetensors(path, self.tensors, self.meta)
        print(f"{path}: {len(self.meta)} cases, {len(self.tensors)} tensors, {n / 1e6:.2f} MB of data")


# `--torch-f32`: also run every case in float32 torch and print how much of the test's tolerance
# torch's own float32 result uses against the float64 reference (diagnostic only; files unchanged).
DIAG = "--torch-f32" in sys.argv
DIAG_WORST = []


def diag(case, pairs):
    worst = (0.0, "")
    for k, (a, b) in pairs.items():
        if a is None or b is None:
            continue
        a, b = a.detach().double(), b.detach().to(torch.float32).double()
        ok = torch.isfinite(b)
        if ok.any():
            ratio = ((a - b).abs() / (1e-5 * b.abs() + 1e-6))[ok].max().item()
            worst = max(worst, (ratio, k))
    DIAG_WORST.append((worst[0], case, worst[1]))


def diag_report():
    if DIAG:
        DIAG_WORST.sort(reverse=True)
        print(f"torch float32 vs the float64 reference: {sum(w > 1 for w, _, _ in DIAG_WORST)} of {len(DIAG_WORST)} cases "
              f"exceed the tolerance; worst:")
        for w, case, k in DIAG_WORST[:15]:
            print(f"  {w:10.3f}x  {case} {k}")


def seed(case):
    torch.manual_seed(zlib.crc32(case.encode()))


def r(*shape):
    return torch.randn(*shape)


def off_kinks(x, kinks, margin=0.05):
    """Moves values within `margin` of a kink to kink ± 2·margin (keeps sign of the offset)."""
    for k in kinks:
        d = x - k
        near = d.abs() < margin
        x = torch.where(near, k + torch.where(d >= 0, 2 * margin, -2 * margin), x)
    return x


def f64(t):
    return t.detach().to(torch.float64) if t.is_floating_point() else t.detach()


# ------------------------------------------------------------------------------- layers
def randomize(m):
    """Seeded, non-default values for every float parameter and buffer (so loading is exercised)."""
    with torch.no_grad():
        for n, p in m.named_parameters():
            if isinstance(m, nn.PReLU):
                p.copy_(torch.randn_like(p) * 0.5)
            elif p.dim() == 1 and n.endswith("weight") or isinstance(m, (nn.LayerNorm,)) and n.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                p.copy_(0.5 * torch.randn_like(p))
            # Conv/Linear keep PyTorch's seeded kaiming-uniform init.
        for n, b in m.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif n.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
            elif n.endswith("num_batches_tracked"):
                b.fill_(3)


L = Group("layers")


def layer(case, cfg, make, x_shape=None, x=None, train=True, forward=None):
    """make(): the torch module (float32). forward(module, x) -> (y, {extra outputs})."""
    seed(case)
    m = make()
    randomize(m)
    m.train(train)
    x = r(*x_shape) if x is None else x
    for n, t in m.state_dict().items():
        L.put(case, f"param.{n}", t)
    L.put(case, "x", x)
    m32 = copy.deepcopy(m) if DIAG else None
    m64 = m.double()
    x64 = f64(x).requires_grad_(True)
    y, extra = forward(m64, x64) if forward else (m64(x64), {})
    gy = torch.randn(y.shape)
    y.backward(f64(gy))
    if DIAG:
        x32 = x.clone().requires_grad_(True)
        y32 = forward(m32, x32)[0] if forward else m32(x32)
        y32.backward(gy)
        diag(case, {"y": (y32, y), "gx": (x32.grad, x64.grad),
                     **{f"grad.{n}": (p32.grad, p.grad) for (n, p32), p in zip(m32.named_parameters(), m64.parameters())}})
    L.put(case, "y", y)
    L.put(case, "gy", gy)
    L.put(case, "gx", x64.grad)
    for k, v in extra.items():
        L.put(case, f"out.{k}", v)
    for n, p in m64.named_parameters():
        L.put(case, f"grad.{n}", p.grad)
    # Also in eval mode, where the buffers must come back unchanged.
    for n, b in m64.named_buffers():
        L.put(case, f"buffer_after.{n}", b)
    L.config(case, dict(cfg, train=train))


def pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


# Conv2d: strides, paddings (ints, tuples, 'same', 'valid'), padding modes, dilations, groups
# (incl. depthwise and depthwise with a channel multiplier), odd and rectangular sizes, batch 1/>1,
# an unbatched (C, H, W) input.
conv2d = [
    dict(cin=3, cout=4, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 3, 7, 6]),
    dict(cin=2, cout=3, k=3, stride=2, padding=0, dilation=1, groups=1, bias=False, mode="zeros", shape=[1, 2, 9, 8]),
    dict(cin=4, cout=6, k=3, stride=1, padding=2, dilation=2, groups=2, bias=True, mode="zeros", shape=[2, 4, 8, 8]),
    dict(cin=4, cout=4, k=3, stride=2, padding=1, dilation=1, groups=4, bias=True, mode="zeros", shape=[2, 4, 9, 9]),
    dict(cin=3, cout=6, k=3, stride=1, padding=1, dilation=1, groups=3, bias=True, mode="zeros", shape=[1, 3, 6, 5]),
    dict(cin=3, cout=5, k=1, stride=1, padding=0, dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 3, 5, 5]),
    dict(cin=4, cout=2, k=1, stride=2, padding=0, dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 4, 7, 6]),
    dict(cin=3, cout=4, k=5, stride=3, padding=2, dilation=1, groups=1, bias=True, mode="zeros", shape=[1, 3, 11, 10]),
    dict(cin=2, cout=4, k=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2, bias=True, mode="zeros", shape=[2, 2, 7, 8]),
    dict(cin=3, cout=2, k=4, stride=1, padding="same", dilation=1, groups=1, bias=True, mode="zeros", shape=[1, 3, 6, 7]),
    dict(cin=2, cout=2, k=3, stride=1, padding="same", dilation=2, groups=2, bias=True, mode="zeros", shape=[2, 2, 7, 6]),
    dict(cin=2, cout=3, k=[2, 3], stride=1, padding="same", dilation=1, groups=1, bias=False, mode="zeros", shape=[1, 2, 5, 6]),
    dict(cin=2, cout=3, k=3, stride=1, padding="valid", dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 2, 5, 6]),
    dict(cin=2, cout=3, k=3, stride=1, padding="same", dilation=2, groups=1, bias=True, mode="reflect", shape=[2, 2, 7, 7]),
    dict(cin=2, cout=3, k=4, stride=1, padding="same", dilation=1, groups=1, bias=True, mode="circular", shape=[1, 2, 6, 6]),
    dict(cin=2, cout=3, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, mode="reflect", shape=[1, 2, 5, 6]),
    dict(cin=4, cout=4, k=3, stride=2, padding=1, dilation=1, groups=4, bias=True, mode="reflect", shape=[2, 4, 7, 6]),
    dict(cin=2, cout=3, k=3, stride=2, padding=1, dilation=1, groups=1, bias=True, mode="replicate", shape=[1, 2, 6, 5]),
    dict(cin=2, cout=4, k=3, stride=1, padding=[2, 1], dilation=1, groups=2, bias=True, mode="replicate", shape=[2, 2, 5, 5]),
    dict(cin=2, cout=2, k=3, stride=1, padding=2, dilation=1, groups=1, bias=False, mode="circular", shape=[2, 2, 5, 5]),
    dict(cin=3, cout=2, k=3, stride=2, padding=[1, 2], dilation=[2, 1], groups=1, bias=True, mode="circular", shape=[1, 3, 8, 7]),
    dict(cin=3, cout=4, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, mode="zeros", shape=[3, 5, 4]),
]
for i, c in enumerate(conv2d):
    pad = c["padding"] if isinstance(c["padding"], str) else pair(c["padding"])
    cfg = dict(kind="conv2d", in_channels=c["cin"], out_channels=c["cout"], kernel_size=pair(c["k"]), stride=pair(c["stride"]),
               padding=pad, dilation=pair(c["dilation"]), groups=c["groups"], bias=c["bias"], padding_mode=c["mode"])
    layer(f"conv2d_{i:02}", cfg, lambda c=c: nn.Conv2d(c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"],
                                                      dilation=c["dilation"], groups=c["groups"], bias=c["bias"],
                                                      padding_mode=c["mode"]), c["shape"])

conv1d = [
    dict(cin=3, cout=4, k=3, stride=2, padding=1, dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 3, 11]),
    dict(cin=4, cout=4, k=3, stride=1, padding=2, dilation=2, groups=2, bias=False, mode="zeros", shape=[1, 4, 9]),
    dict(cin=2, cout=3, k=4, stride=1, padding="same", dilation=1, groups=1, bias=True, mode="zeros", shape=[2, 2, 8]),
    dict(cin=2, cout=2, k=3, stride=1, padding=1, dilation=1, groups=2, bias=True, mode="reflect", shape=[2, 2, 7]),
    dict(cin=2, cout=3, k=3, stride=1, padding=2, dilation=1, groups=1, bias=True, mode="circular", shape=[1, 2, 6]),
    dict(cin=3, cout=2, k=5, stride=2, padding=0, dilation=1, groups=1, bias=True, mode="zeros", shape=[3, 12]),
    dict(cin=2, cout=2, k=4, stride=1, padding="same", dilation=3, groups=1, bias=True, mode="zeros", shape=[2, 2, 13]),
    dict(cin=2, cout=4, k=3, stride=1, padding="same", dilation=1, groups=2, bias=True, mode="replicate", shape=[1, 2, 6]),
]
for i, c in enumerate(conv1d):
    cfg = dict(kind="conv1d", in_channels=c["cin"], out_channels=c["cout"], kernel_size=c["k"], stride=c["stride"],
               padding=c["padding"], dilation=c["dilation"], groups=c["groups"], bias=c["bias"], padding_mode=c["mode"])
    layer(f"conv1d_{i:02}", cfg, lambda c=c: nn.Conv1d(c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"],
                                                      dilation=c["dilation"], groups=c["groups"], bias=c["bias"],
                                                      padding_mode=c["mode"]), c["shape"])

convt = [
    dict(cin=3, cout=2, k=3, stride=2, padding=1, output_padding=1, groups=1, dilation=1, bias=True, shape=[2, 3, 4, 5]),
    dict(cin=4, cout=6, k=2, stride=2, padding=0, output_padding=0, groups=2, dilation=1, bias=True, shape=[1, 4, 3, 3]),
    dict(cin=2, cout=2, k=3, stride=1, padding=1, output_padding=0, groups=1, dilation=2, bias=False, shape=[2, 2, 5, 4]),
    dict(cin=3, cout=3, k=3, stride=3, padding=1, output_padding=2, groups=3, dilation=1, bias=True, shape=[2, 3, 3, 4]),
    dict(cin=2, cout=4, k=[3, 2], stride=[2, 1], padding=[1, 0], output_padding=[1, 0], groups=1, dilation=[1, 2], bias=True,
         shape=[1, 2, 4, 5]),
    dict(cin=2, cout=3, k=4, stride=2, padding=1, output_padding=0, groups=1, dilation=1, bias=True, shape=[2, 3, 3]),
    dict(cin=2, cout=2, k=3, stride=1, padding=0, output_padding=1, groups=1, dilation=2, bias=True, shape=[1, 2, 3, 4]),
]
for i, c in enumerate(convt):
    cfg = dict(kind="conv_transpose2d", in_channels=c["cin"], out_channels=c["cout"], kernel_size=pair(c["k"]),
               stride=pair(c["stride"]), padding=pair(c["padding"]), output_padding=pair(c["output_padding"]),
               groups=c["groups"], dilation=pair(c["dilation"]), bias=c["bias"])
    layer(f"conv_transpose2d_{i:02}", cfg, lambda c=c: nn.ConvTranspose2d(
        c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"], output_padding=c["output_padding"],
        groups=c["groups"], bias=c["bias"], dilation=c["dilation"]), c["shape"])

# Pooling. ceil_mode cases include the rule that drops a last window starting in the right padding.
maxpool = [
    dict(k=2, stride=2, padding=0, dilation=1, ceil=False, shape=[2, 3, 8, 8]),
    dict(k=3, stride=2, padding=1, dilation=1, ceil=True, shape=[1, 2, 9, 10]),
    dict(k=3, stride=1, padding=1, dilation=2, ceil=False, shape=[2, 2, 7, 7]),
    dict(k=2, stride=2, padding=0, dilation=1, ceil=True, shape=[1, 2, 7, 5]),
    dict(k=2, stride=2, padding=1, dilation=1, ceil=True, shape=[1, 2, 7, 5]),
    dict(k=3, stride=3, padding=1, dilation=1, ceil=True, shape=[2, 1, 8, 10]),
    dict(k=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2], ceil=False, shape=[2, 2, 7, 6]),
    dict(k=3, stride=2, padding=0, dilation=1, ceil=False, shape=[2, 5, 5]),
]
for i, c in enumerate(maxpool):
    cfg = dict(kind="max_pool2d", kernel_size=pair(c["k"]), stride=pair(c["stride"]), padding=pair(c["padding"]),
               dilation=pair(c["dilation"]), ceil_mode=c["ceil"])
    layer(f"max_pool2d_{i:02}", cfg, lambda c=c: nn.MaxPool2d(c["k"], c["stride"], c["padding"], c["dilation"],
                                                             ceil_mode=c["ceil"]), c["shape"])

# Ties (small integers): PyTorch takes the first maximum in window order, for values and gradient.
for i, (k, s_, p_, shape) in enumerate([(2, 2, 0, [2, 2, 6, 6]), (3, 2, 1, [1, 2, 7, 7])]):
    case = f"max_pool2d_ties_{i:02}"
    seed(case)
    layer(case, dict(kind="max_pool2d", kernel_size=[k, k], stride=[s_, s_], padding=[p_, p_], dilation=[1, 1], ceil_mode=False),
          lambda k=k, s_=s_, p_=p_: nn.MaxPool2d(k, s_, p_), x=torch.randint(-1, 2, shape).float())
seed("adaptive_max_pool2d_ties_00")
layer("adaptive_max_pool2d_ties_00", dict(kind="adaptive_max_pool2d", output_size=[3, 2]), lambda: nn.AdaptiveMaxPool2d((3, 2)),
      x=torch.randint(0, 2, (2, 2, 7, 5)).float())

# return_indices + MaxUnpool2d: y = unpool(pool(x)); the indices are compared exactly.
unpool = [
    dict(k=2, stride=2, padding=0, output_size=None, shape=[2, 3, 6, 8]),
    dict(k=3, stride=2, padding=1, output_size=None, shape=[1, 2, 7, 9]),
    dict(k=2, stride=2, padding=0, output_size=[7, 9], shape=[2, 2, 7, 9]),
    dict(k=3, stride=3, padding=0, output_size=None, shape=[2, 9, 6]),
]
for i, c in enumerate(unpool):
    def fwd(m, x, c=c):
        v, idx = m[0](x)
        return m[1](v, idx, output_size=c["output_size"]), {"indices": idx}
    cfg = dict(kind="max_unpool2d", kernel_size=c["k"], stride=c["stride"], padding=c["padding"], output_size=c["output_size"])
    layer(f"max_unpool2d_{i:02}", cfg, lambda c=c: nn.ModuleList([
        nn.MaxPool2d(c["k"], c["stride"], c["padding"], return_indices=True), nn.MaxUnpool2d(c["k"], c["stride"], c["padding"])]),
        c["shape"], forward=fwd)

avgpool = [
    dict(k=2, stride=2, padding=0, ceil=False, cip=True, shape=[2, 3, 8, 8]),
    dict(k=3, stride=2, padding=1, ceil=True, cip=False, shape=[1, 2, 9, 10]),
    dict(k=3, stride=2, padding=1, ceil=True, cip=True, shape=[1, 2, 8, 7]),
    dict(k=3, stride=2, padding=1, ceil=False, cip=True, shape=[2, 2, 7, 7]),
    dict(k=3, stride=2, padding=1, ceil=False, cip=False, shape=[2, 2, 7, 7]),
    dict(k=2, stride=2, padding=1, ceil=True, cip=True, shape=[1, 2, 7, 5]),
    dict(k=[3, 2], stride=[1, 2], padding=[1, 0], ceil=False, cip=True, shape=[2, 2, 5, 7]),
    dict(k=2, stride=1, padding=0, ceil=False, cip=True, shape=[3, 4, 5]),
]
for i, c in enumerate(avgpool):
    cfg = dict(kind="avg_pool2d", kernel_size=pair(c["k"]), stride=pair(c["stride"]), padding=pair(c["padding"]),
               ceil_mode=c["ceil"], count_include_pad=c["cip"])
    layer(f"avg_pool2d_{i:02}", cfg, lambda c=c: nn.AvgPool2d(c["k"], c["stride"], c["padding"], ceil_mode=c["ceil"],
                                                             count_include_pad=c["cip"]), c["shape"])

for i, (out, shape) in enumerate([((3, 2), [2, 3, 7, 5]), ((1, 1), [2, 3, 4, 4]), ((4, 4), [1, 2, 8, 8]), ((5, 3), [1, 2, 3, 7]),
                                  ((2, 3), [3, 6, 5])]):
    layer(f"adaptive_avg_pool2d_{i:02}", dict(kind="adaptive_avg_pool2d", output_size=list(out)),
          lambda out=out: nn.AdaptiveAvgPool2d(out), shape)
    layer(f"adaptive_max_pool2d_{i:02}", dict(kind="adaptive_max_pool2d", output_size=list(out)),
          lambda out=out: nn.AdaptiveMaxPool2d(out), shape)

# Linear, Flatten, Identity.
for i, (fin, fout, bias, shape) in enumerate([(5, 3, True, [4, 5]), (4, 2, False, [2, 3, 4]), (6, 4, True, [6]),
                                               (3, 7, True, [1, 3]), (8, 5, True, [2, 2, 3, 8])]):
    layer(f"linear_{i:02}", dict(kind="linear", in_features=fin, out_features=fout, bias=bias),
          lambda fin=fin, fout=fout, bias=bias: nn.Linear(fin, fout, bias=bias), shape)
layer("flatten_00", dict(kind="flatten", start_dim=1, end_dim=-1), lambda: nn.Flatten(), [2, 3, 4, 5])
layer("flatten_01", dict(kind="flatten", start_dim=0, end_dim=2), lambda: nn.Flatten(0, 2), [2, 3, 4, 5])
layer("identity_00", dict(kind="identity"), lambda: nn.Identity(), [2, 3])

# Normalisation: BatchNorm train (output, grads AND running stats) and eval, momentum None
# (cumulative average), affine off, no running stats; GroupNorm; LayerNorm; InstanceNorm2d.
bn = [
    ("batch_norm2d", 3, dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=True), [4, 3, 3, 5]),
    ("batch_norm2d", 2, dict(eps=1e-3, momentum=0.3, affine=True, track_running_stats=True), [1, 2, 3, 4]),
    ("batch_norm2d", 3, dict(eps=1e-5, momentum=None, affine=True, track_running_stats=True), [2, 3, 4, 3]),
    ("batch_norm2d", 2, dict(eps=1e-5, momentum=0.1, affine=False, track_running_stats=True), [3, 2, 2, 3]),
    ("batch_norm2d", 3, dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=False), [2, 3, 3, 3]),
    ("batch_norm1d", 4, dict(eps=1e-3, momentum=0.3, affine=True, track_running_stats=True), [6, 4]),
    ("batch_norm1d", 3, dict(eps=1e-5, momentum=0.1, affine=False, track_running_stats=True), [4, 3, 5]),
    ("batch_norm1d", 3, dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=True), [2, 3, 6]),
]
for i, (kind, c, o, shape) in enumerate(bn):
    cls = nn.BatchNorm2d if kind == "batch_norm2d" else nn.BatchNorm1d
    for train in (True, False):
        layer(f"{kind}_{i:02}_{'train' if train else 'eval'}", dict(o, kind=kind, num_features=c),
              lambda cls=cls, c=c, o=o: cls(c, **o), shape, train=train)

for i, (g, c, eps, affine, shape) in enumerate([(2, 6, 1e-5, True, [2, 6, 3, 4]), (3, 3, 1e-4, False, [2, 3, 5]),
                                                (1, 4, 1e-5, True, [1, 4, 3, 3]), (4, 4, 1e-5, True, [3, 4, 2, 5]),
                                                (2, 4, 1e-5, True, [2, 4])]):
    layer(f"group_norm_{i:02}", dict(kind="group_norm", num_groups=g, num_channels=c, eps=eps, affine=affine),
          lambda g=g, c=c, eps=eps, affine=affine: nn.GroupNorm(g, c, eps=eps, affine=affine), shape)

for i, (ns, eps, affine, shape) in enumerate([([4], 1e-5, True, [3, 5, 4]), ([3, 4], 1e-5, True, [2, 3, 4]),
                                              ([5], 1e-3, False, [2, 5]), ([2, 3, 4], 1e-5, True, [2, 2, 3, 4])]):
    layer(f"layer_norm_{i:02}", dict(kind="layer_norm", normalized_shape=ns, eps=eps, elementwise_affine=affine),
          lambda ns=ns, eps=eps, affine=affine: nn.LayerNorm(ns, eps=eps, elementwise_affine=affine), shape)

# Large common offsets (mean 60, std 0.5): the variance must not come from E[x²] − E[x]² in float32,
# which would be off by ~1e-3 here. Even a careful float32 implementation can't reach 1e-5 on such
# ill-conditioned input (x − mean already loses ~ulp(60)/0.5 ≈ 1e-5 relative; PyTorch's own float32
# result misses the float64 one by up to 16x the tolerance, see --torch-f32), so these cases carry
# tolerance_scale 20, which still fails a cancelling variance by a wide margin.
ILL = dict(tolerance_scale=20, why="ill-conditioned: mean/std = 120, float32 itself (PyTorch's too) misses 1e-5 by up to 16x")
for kind, make, shape in [("batch_norm2d", lambda: nn.BatchNorm2d(3), [4, 3, 2, 3]), ("layer_norm", lambda: nn.LayerNorm(6), [3, 6]),
                          ("group_norm", lambda: nn.GroupNorm(2, 4), [2, 4, 3])]:
    case = f"{kind}_offset"
    seed(case)
    cfg = {"batch_norm2d": dict(kind=kind, num_features=3, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True),
           "layer_norm": dict(kind=kind, normalized_shape=[6], eps=1e-5, elementwise_affine=True),
           "group_norm": dict(kind=kind, num_groups=2, num_channels=4, eps=1e-5, affine=True)}[kind]
    layer(case, dict(cfg, **ILL), make, x=r(*shape) * 0.5 + 60.0)

inorm = [
    (3, dict(eps=1e-5, momentum=0.1, affine=False, track_running_stats=False), [2, 3, 4, 5], [True, False]),
    (3, dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=False), [1, 3, 3, 4], [True, False]),
    (3, dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=True), [2, 3, 4, 5], [True, False]),
    (2, dict(eps=1e-3, momentum=0.4, affine=False, track_running_stats=True), [3, 2, 3, 3], [True, False]),
    (2, dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=False), [2, 4, 3], [True]),
]
for i, (c, o, shape, modes) in enumerate(inorm):
    for train in modes:
        layer(f"instance_norm2d_{i:02}_{'train' if train else 'eval'}", dict(o, kind="instance_norm2d", num_features=c),
              lambda c=c, o=o: nn.InstanceNorm2d(c, **o), shape, train=train)

# Activations. Inputs span ±9 and avoid the kinks (0, ±1, ±3, ±6) where subgradients are conventions.
def act_input(shape, scale=3.0):
    return off_kinks(r(*shape) * scale, [0.0, 1.0, -1.0, 3.0, -3.0, 6.0, -6.0])


acts = [
    ("relu", {}, lambda: nn.ReLU()), ("relu6", {}, lambda: nn.ReLU6()),
    ("leaky_relu", {"negative_slope": 0.01}, lambda: nn.LeakyReLU()),
    ("leaky_relu", {"negative_slope": 0.2}, lambda: nn.LeakyReLU(0.2)),
    ("elu", {"alpha": 1.0}, lambda: nn.ELU()), ("elu", {"alpha": 0.7}, lambda: nn.ELU(0.7)),
    ("selu", {}, lambda: nn.SELU()),
    ("gelu", {"approximate": "none"}, lambda: nn.GELU()), ("gelu", {"approximate": "tanh"}, lambda: nn.GELU(approximate="tanh")),
    ("silu", {}, lambda: nn.SiLU()), ("mish", {}, lambda: nn.Mish()),
    ("hardswish", {}, lambda: nn.Hardswish()), ("hardsigmoid", {}, lambda: nn.Hardsigmoid()),
    ("sigmoid", {}, lambda: nn.Sigmoid()), ("tanh", {}, lambda: nn.Tanh()),
]
for i, (kind, args, make) in enumerate(acts):
    case = f"act_{kind}_{i:02}"
    seed(case)
    layer(case, dict(args, kind=kind), make, x=act_input([2, 3, 4, 5]))
for dim in (0, 1, 2, -1):
    for kind, make in (("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax)):
        case = f"{kind}_dim{dim}"
        seed(case)
        layer(case, dict(kind=kind, dim=dim), lambda make=make, dim=dim: make(dim=dim), x=r(2, 3, 4) * 4)
for kind, make in (("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax)):
    # Masked logits: -inf entries get probability 0 (log-prob -inf) and, for softmax, no gradient.
    case = f"{kind}_masked"
    seed(case)
    xm = r(3, 5) * 3
    xm[0, 1] = xm[1, 4] = xm[2, 0] = xm[2, 3] = float("-inf")
    layer(case, dict(kind=kind, dim=1), lambda make=make: make(dim=1), x=xm)
for kind, make in (("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax)):
    case = f"{kind}_size1_dim"  # a dim of size 1: probability 1, log-probability 0, zero gradient
    seed(case)
    layer(case, dict(kind=kind, dim=1), lambda make=make: make(dim=1), x=r(3, 1, 2))
seed("softmax_large")
layer("softmax_large", dict(kind="softmax", dim=1), lambda: nn.Softmax(dim=1), x=r(3, 6) * 40)
seed("log_softmax_large")
layer("log_softmax_large", dict(kind="log_softmax", dim=-1), lambda: nn.LogSoftmax(dim=-1), x=r(3, 6) * 40)
for i, (n, shape) in enumerate([(1, [2, 3, 4]), (3, [2, 3, 4]), (4, [2, 4, 3, 3]), (1, [5]), (2, [3, 2])]):
    case = f"prelu_{i:02}"
    seed(case)
    layer(case, dict(kind="prelu", num_parameters=n), lambda n=n: nn.PReLU(n), x=off_kinks(r(*shape) * 2, [0.0]))

# Resampling and shuffles.
ups = [
    (dict(size=[7, 9], mode="nearest", align_corners=False), [2, 3, 3, 4]),
    (dict(size=[3, 2], mode="nearest", align_corners=False), [1, 2, 7, 5]),
    (dict(scale_factor=2.0, mode="nearest", align_corners=False), [1, 2, 3, 4]),
    (dict(scale_factor=1.7, mode="nearest", align_corners=False), [1, 2, 3, 5]),
    (dict(scale_factor=0.6, mode="nearest", align_corners=False), [1, 2, 7, 9]),
    (dict(scale_factor=1.1, mode="nearest", align_corners=False), [1, 2, 5, 4]),
    (dict(scale_factor=2.1, mode="nearest", align_corners=False), [1, 1, 5, 4]),
    (dict(scale_factor=0.7, mode="bilinear", align_corners=False), [1, 2, 8, 6]),
    (dict(size=[7, 9], mode="bilinear", align_corners=False), [2, 3, 3, 4]),
    (dict(size=[7, 9], mode="bilinear", align_corners=True), [2, 3, 3, 4]),
    (dict(size=[3, 2], mode="bilinear", align_corners=False), [1, 2, 7, 5]),
    (dict(size=[3, 2], mode="bilinear", align_corners=True), [1, 2, 7, 5]),
    (dict(size=[1, 3], mode="bilinear", align_corners=True), [1, 2, 4, 5]),
    (dict(scale_factor=2.0, mode="bilinear", align_corners=False), [2, 2, 3, 4]),
    (dict(scale_factor=1.5, mode="bilinear", align_corners=False), [1, 2, 5, 3]),
    (dict(scale_factor=1.5, mode="bilinear", align_corners=True), [1, 2, 5, 3]),
]
for i, (u, shape) in enumerate(ups):
    layer(f"upsample_{i:02}", dict(u, kind="upsample"),
          lambda u=u: nn.Upsample(**{k: (tuple(v) if k == "size" else v) for k, v in u.items()
                                     if not (k == "align_corners" and u["mode"] == "nearest")}), shape)
for i, (rr, shape) in enumerate([(2, [2, 8, 3, 4]), (3, [1, 9, 2, 3]), (2, [4, 2, 3]), (2, [2, 3, 4, 1, 2])]):
    layer(f"pixel_shuffle_{i:02}", dict(kind="pixel_shuffle", upscale_factor=rr), lambda rr=rr: nn.PixelShuffle(rr), shape)
for i, (g, shape) in enumerate([(3, [2, 6, 3, 4]), (2, [1, 8, 2, 2]), (2, [2, 4, 5]), (4, [1, 8, 2, 1, 3])]):
    layer(f"channel_shuffle_{i:02}", dict(kind="channel_shuffle", groups=g), lambda g=g: nn.ChannelShuffle(g), shape)
for i, (p, shape) in enumerate([([1, 2, 0, 3], [2, 3, 4, 5]), ([2, 2, 2, 2], [1, 2, 3, 3]), ([-1, 2, 1, -2], [2, 2, 5, 6])]):
    layer(f"zero_pad2d_{i:02}", dict(kind="zero_pad2d", padding=p), lambda p=p: nn.ZeroPad2d(tuple(p)), shape)

# A composite: Sequential state_dict keys ("0.weight", "1.running_mean", ...) and gradients through
# Conv -> BN (train) -> ReLU -> MaxPool -> Flatten -> Linear.
layer("sequential_cnn", dict(kind="sequential_cnn"), lambda: nn.Sequential(
    nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)),
    [3, 2, 4, 4])
L.save()

# ------------------------------------------------------------------------------- ops
O = Group("ops")


def op(case, cfg, fn, x, params=None, aux=None, buffers=None, O=O):
    """fn(x, **params, **aux, **buffers) -> y or (y, {extra outputs}); params are differentiable."""
    params, aux, buffers = params or {}, aux or {}, buffers or {}
    O.put(case, "x", x)
    for k, v in params.items():
        O.put(case, f"param.{k}", v)
    for k, v in aux.items():
        O.put(case, f"aux.{k}", v)
    for k, v in buffers.items():
        O.put(case, f"aux.{k}", v)
    x64 = f64(x).requires_grad_(True)
    p64 = {k: f64(v).requires_grad_(True) for k, v in params.items()}
    b64 = {k: f64(v).clone() for k, v in buffers.items()}
    out = fn(x64, **p64, **{k: f64(v) for k, v in aux.items()}, **b64)
    y, extra = out if isinstance(out, tuple) else (out, {})
    gy = torch.randn(y.shape)
    y.backward(f64(gy))
    if DIAG:
        x32 = x.clone().requires_grad_(True)
        p32 = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out32 = fn(x32, **p32, **aux, **{k: v.clone() for k, v in buffers.items()})
        y32 = out32[0] if isinstance(out32, tuple) else out32
        y32.backward(gy)
        diag(case, {"y": (y32, y), "gx": (x32.grad, x64.grad), **{f"grad.{k}": (p32[k].grad, v.grad) for k, v in p64.items()}})
    O.put(case, "y", y)
    O.put(case, "gy", gy)
    O.put(case, "gx", x64.grad if x64.grad is not None else torch.zeros_like(x))
    for k, v in p64.items():
        O.put(case, f"grad.{k}", v.grad if v.grad is not None else torch.zeros_like(v))
    for k, v in extra.items():
        O.put(case, f"out.{k}", v)
    for k, v in b64.items():
        O.put(case, f"buffer_after.{k}", v)
    O.config(case, cfg)


def O_case(case, cfg, fn, xs, params=None, aux=None, buffers=None):
    seed(case)
    x = xs() if callable(xs) else xs
    p = {k: (v() if callable(v) else v) for k, v in (params or {}).items()}
    op(case, dict(cfg, op=cfg.get("op", case.rsplit("_", 1)[0])), fn, x, p, aux, buffers)


def w_(*s):
    return lambda: torch.rand(*s) - 0.5


# Functional conv/pool with asymmetric (tuple) hyper-parameters the layer builders don't expose.
O_case("conv2d_00", dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2),
       lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
       lambda: r(2, 4, 7, 6), dict(w=w_(6, 2, 3, 2), b=w_(6)))
O_case("conv2d_01", dict(stride=[2, 2], padding=[0, 0], dilation=[1, 1], groups=1),
       lambda x, w: F.conv2d(x, w, None, stride=2), lambda: r(1, 3, 6, 7), dict(w=w_(5, 3, 1, 1)))
O_case("conv2d_02", dict(stride=[1, 3], padding=[2, 1], dilation=[2, 1], groups=1),
       lambda x, w, b: F.conv2d(x, w, b, stride=(1, 3), padding=(2, 1), dilation=(2, 1)),
       lambda: r(3, 8, 9), dict(w=w_(2, 3, 3, 3), b=w_(2)))
O_case("conv2d_03", dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=8),
       lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=8), lambda: r(2, 8, 6, 6), dict(w=w_(8, 1, 3, 3), b=w_(8)))
for i, mode in enumerate(["reflect", "replicate", "circular"]):
    O_case(f"conv2d_padded_{i:02}", dict(stride=[2, 1], padding=[1, 2], dilation=[1, 1], groups=1, mode=mode),
           lambda x, w, b, mode=mode: F.conv2d(F.pad(x, (2, 2, 1, 1), mode=mode), w, b, stride=(2, 1)),
           lambda: r(2, 2, 6, 5), dict(w=w_(3, 2, 3, 3), b=w_(3)))
O_case("conv_transpose2d_00", dict(stride=[2, 3], padding=[1, 0], dilation=[1, 2], groups=2, output_padding=[1, 2]),
       lambda x, w, b: F.conv_transpose2d(x, w, b, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2)),
       lambda: r(2, 4, 3, 4), dict(w=w_(4, 3, 3, 2), b=w_(6)))
# output_padding at or above the stride (allowed while below the dilation).
O_case("conv_transpose2d_02", dict(stride=[1, 2], padding=[1, 0], dilation=[3, 1], groups=1, output_padding=[2, 1]),
       lambda x, w, b: F.conv_transpose2d(x, w, b, stride=(1, 2), padding=(1, 0), output_padding=(2, 1), dilation=(3, 1)),
       lambda: r(2, 2, 3, 4), dict(w=w_(2, 3, 2, 3), b=w_(3)))
O_case("conv_transpose2d_01", dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, output_padding=[0, 0]),
       lambda x, w: F.conv_transpose2d(x, w), lambda: r(1, 2, 4, 3), dict(w=w_(2, 3, 2, 2)))
O_case("max_pool2d_with_indices_00", dict(kernel=[3, 2], stride=[2, 1], padding=[1, 1], dilation=[1, 2], ceil_mode=True),
       lambda x: (lambda v, i: (v, {"indices": i}))(*F.max_pool2d(x, (3, 2), (2, 1), (1, 1), (1, 2), ceil_mode=True,
                                                                  return_indices=True)), lambda: r(2, 3, 8, 7))
O_case("max_pool2d_with_indices_01", dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=False),
       lambda x: (lambda v, i: (v, {"indices": i}))(*F.max_pool2d(x, 2, return_indices=True)), lambda: r(3, 6, 4))
seed("max_unpool2d_00")
_v, _i = F.max_pool2d(r(2, 3, 7, 8), 2, return_indices=True)
O_case("max_unpool2d_00", dict(output_size=[7, 8]), lambda x, indices: F.max_unpool2d(x, indices, 2, output_size=(7, 8)),
       _v, aux=dict(indices=_i))
O_case("avg_pool2d_00", dict(kernel=[3, 2], stride=[2, 1], padding=[1, 1], ceil_mode=True, count_include_pad=True),
       lambda x: F.avg_pool2d(x, (3, 2), (2, 1), (1, 1), ceil_mode=True, count_include_pad=True), lambda: r(2, 2, 8, 5))
O_case("avg_pool2d_01", dict(kernel=[3, 2], stride=[2, 1], padding=[1, 1], ceil_mode=True, count_include_pad=False),
       lambda x: F.avg_pool2d(x, (3, 2), (2, 1), (1, 1), ceil_mode=True, count_include_pad=False), lambda: r(2, 2, 8, 5))
O_case("adaptive_avg_pool2d_00", dict(output_size=[4, 5]), lambda x: F.adaptive_avg_pool2d(x, (4, 5)), lambda: r(2, 3, 7, 9))
O_case("adaptive_max_pool2d_with_indices_00", dict(output_size=[3, 4]),
       lambda x: (lambda v, i: (v, {"indices": i}))(*F.adaptive_max_pool2d(x, (3, 4), return_indices=True)), lambda: r(2, 2, 5, 7))
O_case("adaptive_max_pool2d_with_indices_01", dict(output_size=[5, 4]),
       lambda x: (lambda v, i: (v, {"indices": i}))(*F.adaptive_max_pool2d(x, (5, 4), return_indices=True)), lambda: r(1, 2, 3, 3))

# Functional batch_norm: batch statistics without running ones, eval with running ones and no affine,
# training updating running stats (compared after forward).
O_case("batch_norm_00", dict(training=True, momentum=0.1, eps=1e-5, running=False, weight=True, bias=False),
       lambda x, w: F.batch_norm(x, None, None, w, None, training=True, momentum=0.1, eps=1e-5),
       lambda: r(4, 3, 2, 2), dict(w=lambda: torch.rand(3) + 0.5))
O_case("batch_norm_01", dict(training=False, momentum=0.1, eps=1e-3, running=True, weight=False, bias=False),
       lambda x, running_mean, running_var: F.batch_norm(x, running_mean, running_var, training=False, eps=1e-3),
       lambda: r(2, 3, 5), buffers=dict(running_mean=torch.randn(3) * 0.3, running_var=torch.rand(3) + 0.5))
O_case("batch_norm_02", dict(training=True, momentum=0.25, eps=1e-5, running=True, weight=True, bias=True),
       lambda x, w, b, running_mean, running_var: F.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=0.25),
       lambda: r(3, 2, 3, 4), dict(w=lambda: torch.rand(2) + 0.5, b=w_(2)),
       buffers=dict(running_mean=torch.randn(2) * 0.3, running_var=torch.rand(2) + 0.5))

for i, (dim, shape) in enumerate([(0, [3, 4, 5]), (1, [2, 3, 4, 5]), (2, [2, 3, 4, 5]), (-1, [2, 3, 4, 5]), (0, [7])]):
    O_case(f"softmax_{i:02}", dict(dim=dim), lambda x, dim=dim: torch.softmax(x, dim), lambda shape=shape: r(*shape) * 5)
    O_case(f"log_softmax_{i:02}", dict(dim=dim), lambda x, dim=dim: torch.log_softmax(x, dim), lambda shape=shape: r(*shape) * 5)

def img(f, x, *a, **k):
    """f on a (C, H, W) input as one image, as cnnkit's 2-d resampling treats 3-d inputs."""
    return f(x.unsqueeze(0), *a, **k).squeeze(0) if x.dim() == 3 else f(x, *a, **k)


for i, (size, shape) in enumerate([([7, 9], [2, 3, 3, 4]), ([3, 4], [1, 2, 7, 9]), ([5, 5], [1, 1, 5, 5]), ([6, 2], [2, 4, 3]),
                                   ([11, 13], [1, 1, 4, 3])]):
    O_case(f"upsample_nearest2d_{i:02}", dict(size=size), lambda x, size=size: img(F.interpolate, x, size=tuple(size), mode="nearest"),
           lambda shape=shape: r(*shape))
for i, (size, ac, shape) in enumerate([([7, 9], False, [2, 3, 3, 4]), ([7, 9], True, [2, 3, 3, 4]), ([3, 4], False, [1, 2, 7, 9]),
                                       ([3, 4], True, [1, 2, 7, 9]), ([1, 1], True, [1, 2, 3, 3]), ([1, 1], False, [1, 2, 3, 3]),
                                       ([4, 6], False, [2, 1, 1, 1])]):
    O_case(f"upsample_bilinear2d_{i:02}", dict(size=size, align_corners=ac),
           lambda x, size=size, ac=ac: F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=ac),
           lambda shape=shape: r(*shape))

pads = [
    ([1, 2, 0, 3], "constant", 0.0, [2, 3, 4, 5]), ([2, 1, 1, 2], "constant", 0.5, [1, 2, 3, 4]),
    ([-1, 2, 1, -2], "constant", -1.25, [2, 2, 5, 6]), ([2, 1, 3, 1], "reflect", 0.0, [2, 2, 5, 4]),
    ([1, 3, 2, 0], "replicate", 0.0, [1, 2, 4, 5]), ([2, 3, 1, 4], "circular", 0.0, [2, 2, 5, 4]),
    ([1, 1, 0, 0], "reflect", 0.0, [2, 3, 6]), ([2, 0, 1, 1], "replicate", 0.0, [3, 4, 4]),
]
for i, (p, mode, value, shape) in enumerate(pads):
    # A 3-d input with 4 amounts is one unbatched (C, H, W) image to F.pad, as to cnnkit's pad2d.
    fn = lambda x, p=p, mode=mode, value=value: F.pad(x, tuple(p), mode=mode, value=value) if mode == "constant" \
        else F.pad(x, tuple(p), mode=mode)
    O_case(f"pad2d_{i:02}", dict(pad=p, mode=mode, value=value), fn, lambda shape=shape: r(*shape))

mm = [([3, 4], [4, 5]), ([4], [4]), ([4], [4, 3]), ([3, 4], [4]), ([2, 3, 4], [4, 5]), ([2, 1, 3, 4], [3, 4, 2]),
      ([5], [2, 5, 3]), ([2, 3, 4], [4])]
for i, (a, b) in enumerate(mm):
    O_case(f"matmul_{i:02}", dict(), lambda x, b: torch.matmul(x, b), lambda a=a: r(*a), dict(b=lambda b=b: r(*b)))
O_case("matmul_transposed_00", dict(op="matmul", transpose_x=True, transpose_b=True), lambda x, b: torch.matmul(x.t(), b.t()),
       lambda: r(4, 3), dict(b=lambda: r(5, 4)))
O_case("bmm_00", dict(), lambda x, b: torch.bmm(x, b), lambda: r(3, 2, 4), dict(b=lambda: r(3, 4, 5)))
O_case("linear_00", dict(bias=True), lambda x, w, b: F.linear(x, w, b), lambda: r(2, 3, 5), dict(w=w_(4, 5), b=w_(4)))
O_case("linear_01", dict(bias=False), lambda x, w: F.linear(x, w), lambda: r(3, 5), dict(w=w_(2, 5)))

# Elementwise unary ops (inputs in each op's domain, off kinks).
pos = lambda: torch.rand(3, 4, 5) * 3 + 0.2
wide = lambda: act_input([3, 4, 5])
unary = [
    ("neg", {}, torch.neg, wide), ("exp", {}, torch.exp, lambda: r(3, 4, 5)), ("log", {}, torch.log, pos),
    ("sqrt", {}, torch.sqrt, pos), ("rsqrt", {}, torch.rsqrt, pos), ("abs", {}, torch.abs, wide),
    ("sin", {}, torch.sin, wide), ("cos", {}, torch.cos, wide), ("tanh", {}, torch.tanh, wide),
    ("sigmoid", {}, torch.sigmoid, wide), ("recip", {}, torch.reciprocal, lambda: off_kinks(r(3, 4, 5) * 2, [0.0], 0.3)),
    ("relu", {}, torch.relu, wide), ("relu6", {}, F.relu6, wide),
    ("hardtanh", {"min": -2.0, "max": 1.5}, lambda x: F.hardtanh(x, -2.0, 1.5), lambda: off_kinks(r(3, 4, 5) * 3, [-2.0, 1.5])),
    ("leaky_relu", {"negative_slope": 0.3}, lambda x: F.leaky_relu(x, 0.3), wide),
    ("elu", {"alpha": 1.3}, lambda x: F.elu(x, 1.3), wide), ("selu", {}, F.selu, wide),
    ("gelu", {"approximate": "none"}, F.gelu, wide), ("gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh"), wide),
    ("silu", {}, F.silu, wide), ("mish", {}, F.mish, wide),
    ("mish", {}, F.mish, lambda: off_kinks(r(3, 4, 5) * 12, [20.0, -20.0], 0.5)),
    ("hardswish", {}, F.hardswish, wide), ("hardsigmoid", {}, F.hardsigmoid, wide),
    ("softplus", {"beta": 1.0, "threshold": 20.0}, F.softplus, lambda: off_kinks(r(3, 4, 5) * 10, [20.0, -20.0], 0.5)),
    ("softplus", {"beta": 2.0, "threshold": 5.0}, lambda x: F.softplus(x, 2.0, 5.0), lambda: off_kinks(r(3, 4, 5) * 4, [2.5], 0.2)),
    ("add_scalar", {"v": 1.5}, lambda x: x + 1.5, wide), ("mul_scalar", {"v": -0.7}, lambda x: x * -0.7, wide),
    ("div_scalar", {"v": 3.0}, lambda x: x / 3.0, wide),
    ("powf", {"p": 2.5}, lambda x: x.pow(2.5), pos), ("powf", {"p": -1.5}, lambda x: x.pow(-1.5), pos),
    ("powf", {"p": 3.0}, lambda x: x.pow(3.0), wide), ("square", {}, torch.square, wide),
    ("clamp", {"min": -1.0, "max": 2.0}, lambda x: x.clamp(-1.0, 2.0), lambda: off_kinks(r(3, 4, 5) * 2, [-1.0, 2.0])),
    ("clamp", {"min": 0.5, "max": None}, lambda x: x.clamp(min=0.5), lambda: off_kinks(r(3, 4, 5) * 2, [0.5])),
    ("clamp", {"min": None, "max": -0.5}, lambda x: x.clamp(max=-0.5), lambda: off_kinks(r(3, 4, 5) * 2, [-0.5])),
]
for i, (name, args, fn, xs) in enumerate(unary):
    O_case(f"unary_{name}_{i:02}", dict(args, op="unary", fn=name), lambda x, fn=fn: fn(x), xs)

# Exactly at the kinks: PyTorch's subgradient conventions (relu'(0) = 0, leaky/elu/prelu take the
# negative branch at 0, |x|'(0) = 0, hardtanh/relu6/hardsigmoid exclude their bounds, hardswish and
# clamp include them).
kink_x = lambda: torch.tensor([-6.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 20.0, -20.0, 0.0, 3.0])
kinks = [
    ("relu", {}, torch.relu), ("relu6", {}, F.relu6), ("hardtanh", {"min": -2.0, "max": 1.5}, lambda x: F.hardtanh(x, -2.0, 1.5)),
    ("leaky_relu", {"negative_slope": 0.3}, lambda x: F.leaky_relu(x, 0.3)), ("elu", {"alpha": 1.3}, lambda x: F.elu(x, 1.3)),
    ("selu", {}, F.selu), ("abs", {}, torch.abs), ("hardswish", {}, F.hardswish), ("hardsigmoid", {}, F.hardsigmoid),
    ("softplus", {"beta": 1.0, "threshold": 20.0}, F.softplus), ("softplus", {"beta": 2.0, "threshold": 1.0}, lambda x: F.softplus(x, 2.0, 1.0)),
    ("clamp", {"min": -1.0, "max": 2.0}, lambda x: x.clamp(-1.0, 2.0)), ("clamp", {"min": 0.0, "max": None}, lambda x: x.clamp(min=0.0)),
    ("mish", {}, F.mish), ("gelu", {"approximate": "none"}, F.gelu), ("silu", {}, F.silu),
]
for i, (name, args, fn) in enumerate(kinks):
    O_case(f"kink_{name}_{i:02}", dict(args, op="unary", fn=name), lambda x, fn=fn: fn(x), kink_x)
O_case("kink_maximum_00", dict(op="binary", fn="maximum"), lambda x, b: torch.maximum(x, b),
       lambda: torch.tensor([1.0, 2.0, -1.0, 0.5]), dict(b=lambda: torch.tensor([1.0, 1.0, -1.0, 0.7])))
O_case("kink_minimum_00", dict(op="binary", fn="minimum"), lambda x, b: torch.minimum(x, b),
       lambda: torch.tensor([1.0, 2.0, -1.0, 0.5]), dict(b=lambda: torch.tensor([1.0, 1.0, -1.0, 0.7])))
ties = lambda: torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 5.0, 4.0, 5.0]])
O_case("kink_max_dim_00", dict(op="reduce", fn="max_dim", dim=1, keepdim=False),
       lambda x: (lambda v, i: (v, {"indices": i}))(*x.max(1)), ties)
O_case("kink_min_dim_00", dict(op="reduce", fn="min_dim", dim=0, keepdim=False),
       lambda x: (lambda v, i: (v, {"indices": i}))(*x.min(0)), ties)
# max()/min() over everything share the gradient evenly among tied extremes (unlike max(dim)).
O_case("kink_max_all_00", dict(op="reduce", fn="max_all"), lambda x: x.max(), ties)
O_case("kink_min_all_00", dict(op="reduce", fn="min_all"), lambda x: x.min(), lambda: torch.tensor([[1.0, -3.0], [-3.0, 0.0]]))

# Non-contiguous inputs: the op runs on x.transpose(-2, -1), a strided view.
nc = [
    ("conv2d", dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1),
     lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda: r(2, 3, 5, 6), dict(w=w_(4, 3, 3, 3), b=w_(4))),
    ("max_pool2d_with_indices", dict(kernel=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1], ceil_mode=True),
     lambda x: (lambda v, i: (v, {"indices": i}))(*F.max_pool2d(x, 2, ceil_mode=True, return_indices=True)), lambda: r(2, 2, 5, 6), None),
    ("avg_pool2d", dict(kernel=[3, 3], stride=[2, 2], padding=[1, 1], ceil_mode=False, count_include_pad=False),
     lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), lambda: r(2, 2, 5, 6), None),
    ("softmax", dict(dim=-1), lambda x: torch.softmax(x, -1), lambda: r(2, 3, 4), None),
    ("log_softmax", dict(dim=1), lambda x: torch.log_softmax(x, 1), lambda: r(2, 3, 4), None),
    ("upsample_bilinear2d", dict(size=[5, 7], align_corners=False),
     lambda x: F.interpolate(x, size=(5, 7), mode="bilinear"), lambda: r(1, 2, 4, 3), None),
    ("upsample_nearest2d", dict(size=[5, 7]), lambda x: F.interpolate(x, size=(5, 7), mode="nearest"), lambda: r(1, 2, 4, 3), None),
    ("pad2d", dict(pad=[1, 2, 2, 1], mode="reflect", value=0.0), lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"), lambda: r(2, 2, 4, 5), None),
    ("adaptive_avg_pool2d", dict(output_size=[2, 3]), lambda x: F.adaptive_avg_pool2d(x, (2, 3)), lambda: r(2, 2, 5, 4), None),
    ("batch_norm", dict(training=True, momentum=0.1, eps=1e-5, running=False, weight=True, bias=True),
     lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), lambda: r(3, 2, 4, 5), dict(w=w_(2), b=w_(2))),
    ("linear", dict(bias=True), lambda x, w, b: F.linear(x, w, b), lambda: r(2, 5, 3), dict(w=w_(4, 5), b=w_(4))),
    ("unary", dict(fn="gelu", approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"), lambda: r(3, 4, 2), None),
    ("reduce", dict(fn="var", dims=[-1], correction=1, keepdim=True), lambda x: x.var(-1, keepdim=True), lambda: r(3, 4, 5), None),
]
for i, (name, args, fn, xs, params) in enumerate(nc):
    O_case(f"noncontig_{name}_{i:02}", dict(args, op=name, pre="transpose_hw"),
           lambda x, fn=fn, **kw: fn(x.transpose(-2, -1), **kw), xs, params)

# Broadcasting binary ops (gradients are summed back to each operand's shape).
away = lambda *s: (lambda: off_kinks(r(*s) * 2, [0.0], 0.3))
binary = [
    ("add", torch.add, lambda: r(3, 1, 5), lambda: r(4, 1)), ("sub", torch.sub, lambda: r(2, 3, 4), lambda: r(4)),
    ("mul", torch.mul, lambda: r(3, 4), lambda: r(2, 1, 4)), ("div", torch.div, lambda: r(3, 4), away(4)),
    ("div", torch.div, away(3, 1), away(3, 4)), ("pow", torch.pow, lambda: torch.rand(3, 4) * 2 + 0.3, lambda: r(4)),
    ("maximum", torch.maximum, lambda: r(3, 4), lambda: r(3, 4)), ("minimum", torch.minimum, lambda: r(2, 3, 4), lambda: r(3, 1)),
    ("add", torch.add, lambda: r(3, 4), lambda: r(())),
]
for i, (name, fn, xa, xb) in enumerate(binary):
    O_case(f"binary_{name}_{i:02}", dict(op="binary", fn=name), lambda x, b, fn=fn: fn(x, b), xa, dict(b=xb))

# Reductions.
red = [
    ("sum", dict(dims=[1, 2], keepdim=False), lambda x: x.sum((1, 2))), ("sum", dict(dims=[], keepdim=False), lambda x: x.sum()),
    ("sum", dict(dims=[-1], keepdim=True), lambda x: x.sum(-1, keepdim=True)),
    ("mean", dict(dims=[0, 2], keepdim=True), lambda x: x.mean((0, 2), keepdim=True)), ("mean", dict(dims=[], keepdim=False), lambda x: x.mean()),
    ("var", dict(dims=[1], correction=1, keepdim=False), lambda x: x.var(1, correction=1)),
    ("var", dict(dims=[0, 2], correction=0, keepdim=True), lambda x: x.var((0, 2), correction=0, keepdim=True)),
    ("std", dict(dims=[2], correction=1, keepdim=False), lambda x: x.std(2)),
    ("std", dict(dims=[], correction=0, keepdim=False), lambda x: x.std(correction=0)),
    ("max_dim", dict(dim=1, keepdim=False), lambda x: (lambda v, i: (v, {"indices": i}))(*x.max(1))),
    ("min_dim", dict(dim=-1, keepdim=True), lambda x: (lambda v, i: (v, {"indices": i}))(*x.min(-1, keepdim=True))),
    ("max_all", dict(), lambda x: x.max()), ("min_all", dict(), lambda x: x.min()),
    ("logsumexp", dict(dim=1, keepdim=False), lambda x: x.logsumexp(1)),
    ("logsumexp", dict(dim=-1, keepdim=True), lambda x: (x * 30).logsumexp(-1, keepdim=True) / 30),
]
for i, (name, args, fn) in enumerate(red):
    O_case(f"reduce_{name}_{i:02}", dict(args, op="reduce", fn=name), fn, lambda: r(3, 4, 5))

# Shape and indexing ops (views must route gradients correctly).
seed("shape_gather_00")
_gi = torch.randint(0, 4, (3, 6, 5))
seed("shape_scatter_add_00")
_si = torch.randint(0, 3, (2, 4))
shape_ops = [
    ("cat", dict(dim=1), lambda x, b: torch.cat([x, b, x], 1), lambda: r(2, 3, 4), dict(b=lambda: r(2, 2, 4)), None),
    ("stack", dict(dim=1), lambda x, b: torch.stack([x, b], 1), lambda: r(3, 4), dict(b=lambda: r(3, 4)), None),
    ("permute", dict(perm=[2, 0, 1]), lambda x: x.permute(2, 0, 1), lambda: r(2, 3, 4), None, None),
    ("transpose", dict(d0=0, d1=-1), lambda x: x.transpose(0, -1) * 1.0, lambda: r(2, 3, 4), None, None),
    ("narrow", dict(dim=1, start=1, len=2), lambda x: x.narrow(1, 1, 2), lambda: r(2, 4, 3), None, None),
    ("expand", dict(shape=[2, 3, 4]), lambda x: x.expand(2, 3, 4), lambda: r(3, 1), None, None),
    ("reshape", dict(shape=[4, 6]), lambda x: x.permute(1, 0, 2).reshape(4, 6), lambda: r(2, 3, 4), None, None),
    ("flatten", dict(start=1, end=2), lambda x: x.flatten(1, 2), lambda: r(2, 3, 4, 2), None, None),
    ("gather", dict(dim=1), lambda x, idx: torch.gather(x, 1, idx), lambda: r(3, 4, 5), None, dict(idx=_gi[:, :6])),
    ("index_select", dict(dim=0), lambda x, idx: torch.index_select(x, 0, idx), lambda: r(4, 3),
     None, dict(idx=torch.tensor([3, 0, 3, 1, 2]))),
    ("scatter_add", dict(dim=0), lambda x, src, idx: x.scatter_add(0, idx, src), lambda: r(3, 4), dict(src=lambda: r(2, 4)),
     dict(idx=_si)),
    ("where", dict(), lambda x, b, mask: torch.where(mask.bool(), x, b), lambda: r(3, 4), dict(b=lambda: r(4)),
     dict(mask=(torch.arange(12).reshape(3, 4) % 3 == 0).to(torch.uint8))),
    ("split_sum", dict(size=2, dim=1), lambda x: sum(p.sum() * (k + 1) for k, p in enumerate(torch.split(x, 2, 1))),
     lambda: r(2, 5), None, None),
    ("chunk_sum", dict(chunks=3, dim=0), lambda x: sum(p.sum() * (k + 1) for k, p in enumerate(torch.chunk(x, 3, 0))),
     lambda: r(7, 2), None, None),
]
for i, (name, args, fn, xs, params, aux) in enumerate(shape_ops):
    O_case(f"shape_{name}_{i:02}", dict(args, op="shape", fn=name), fn, xs, params, aux)
O.save()

# ------------------------------------------------------------------------------- losses
S = Group("losses")


def L_case(case, cfg, fn, x, target, aux=None, target_grad=True):
    """fn(x, target, **aux). A float target is differentiable (its gradient is stored too) unless
    target_grad is False; class indices are auxiliary."""
    seed(case)
    x = x() if callable(x) else x
    target = target() if callable(target) else target
    a = {k: (v() if callable(v) else v) for k, v in (aux or {}).items()}
    diff = target.is_floating_point() and target_grad
    params = {"target": target} if diff else {}
    if not diff:
        a["target"] = target
    op(case, dict(cfg, op=cfg["loss"]), lambda x, **kw: fn(x, kw.pop("target"), **kw), x, params, a, O=S)


labels = lambda: torch.tensor([0, 3, 4, 1, 3, 2])
ign = lambda: torch.tensor([0, -100, 4, 1, -100, 2])
cw = lambda: torch.rand(5) + 0.5
logits = lambda: r(6, 5) * 2
for red in ("mean", "sum", "none"):
    L_case(f"ce_{red}", dict(loss="cross_entropy", reduction=red), lambda x, t, red=red: F.cross_entropy(x, t, reduction=red),
           logits, labels)
    L_case(f"ce_weight_ignore_{red}", dict(loss="cross_entropy", reduction=red, weight=True),
           lambda x, t, weight, red=red: F.cross_entropy(x, t, weight=weight, reduction=red), logits, ign, dict(weight=cw))
    L_case(f"ce_smooth_{red}", dict(loss="cross_entropy", reduction=red, label_smoothing=0.1),
           lambda x, t, red=red: F.cross_entropy(x, t, label_smoothing=0.1, reduction=red), logits, labels)
    L_case(f"ce_smooth_weight_ignore_{red}", dict(loss="cross_entropy", reduction=red, weight=True, label_smoothing=0.2),
           lambda x, t, weight, red=red: F.cross_entropy(x, t, weight=weight, label_smoothing=0.2, reduction=red), logits, ign,
           dict(weight=cw))
    L_case(f"ce_probs_{red}", dict(loss="cross_entropy", reduction=red),
           lambda x, t, red=red: F.cross_entropy(x, t, reduction=red), logits, lambda: torch.softmax(r(6, 5), 1))
    L_case(f"ce_probs_smooth_weight_{red}", dict(loss="cross_entropy", reduction=red, weight=True, label_smoothing=0.15),
           lambda x, t, weight, red=red: F.cross_entropy(x, t, weight=weight, label_smoothing=0.15, reduction=red),
           logits, lambda: torch.softmax(r(6, 5), 1), dict(weight=cw))
    L_case(f"ce_2d_{red}", dict(loss="cross_entropy", reduction=red, weight=True, ignore_index=2),
           lambda x, t, weight, red=red: F.cross_entropy(x, t, weight=weight, ignore_index=2, reduction=red),
           lambda: r(2, 4, 3, 5), lambda: torch.randint(0, 4, (2, 3, 5)), dict(weight=lambda: torch.rand(4) + 0.5))
    L_case(f"ce_2d_smooth_{red}", dict(loss="cross_entropy", reduction=red, label_smoothing=0.3),
           lambda x, t, red=red: F.cross_entropy(x, t, label_smoothing=0.3, reduction=red),
           lambda: r(2, 3, 2, 4), lambda: torch.tensor([[[0, 1, -100, 2], [2, 2, 0, 1]], [[1, -100, 0, 0], [2, 1, 1, 0]]]))
    L_case(f"ce_2d_probs_{red}", dict(loss="cross_entropy", reduction=red, weight=True),
           lambda x, t, weight, red=red: F.cross_entropy(x, t, weight=weight, reduction=red),
           lambda: r(2, 3, 2, 4), lambda: torch.softmax(r(2, 3, 2, 4), 1), dict(weight=lambda: torch.rand(3) + 0.5))
    L_case(f"nll_{red}", dict(loss="nll_loss", reduction=red, weight=True),
           lambda x, t, weight, red=red: F.nll_loss(x, t, weight=weight, reduction=red),
           lambda: torch.log_softmax(r(6, 5), 1), ign, dict(weight=cw))
    L_case(f"nll_2d_{red}", dict(loss="nll_loss", reduction=red, ignore_index=1),
           lambda x, t, red=red: F.nll_loss(x, t, ignore_index=1, reduction=red),
           lambda: torch.log_softmax(r(2, 3, 4, 2), 1), lambda: torch.randint(0, 3, (2, 4, 2)))
L_case("ce_1d_extra_dim", dict(loss="cross_entropy", reduction="mean"), lambda x, t: F.cross_entropy(x, t),
       lambda: r(3, 4, 5), lambda: torch.randint(0, 4, (3, 5)))

probs = lambda: torch.rand(4, 3) * 0.9 + 0.05
bits = lambda: (torch.rand(4, 3) > 0.5).float()
soft = lambda: torch.rand(4, 3)
bw = lambda: torch.rand(3) + 0.5
for red in ("mean", "sum", "none"):
    L_case(f"bce_{red}", dict(loss="binary_cross_entropy", reduction=red),
           lambda x, t, red=red: F.binary_cross_entropy(x, t, reduction=red), probs, soft)
    L_case(f"bce_weight_{red}", dict(loss="binary_cross_entropy", reduction=red, weight=True),
           lambda x, t, weight, red=red: F.binary_cross_entropy(x, t, weight=weight, reduction=red), probs, bits, dict(weight=bw))
    L_case(f"bce_logits_{red}", dict(loss="binary_cross_entropy_with_logits", reduction=red),
           lambda x, t, red=red: F.binary_cross_entropy_with_logits(x, t, reduction=red), lambda: r(4, 3) * 3, soft)
    L_case(f"bce_logits_pw_{red}", dict(loss="binary_cross_entropy_with_logits", reduction=red, weight=True, pos_weight=True),
           lambda x, t, weight, pos_weight, red=red: F.binary_cross_entropy_with_logits(x, t, weight=weight, pos_weight=pos_weight,
                                                                                         reduction=red),
           lambda: r(4, 3) * 3, bits, dict(weight=bw, pos_weight=lambda: torch.rand(3) * 3 + 0.2))
L_case("bce_logits_large", dict(loss="binary_cross_entropy_with_logits", reduction="mean", pos_weight=True),
       lambda x, t, pos_weight: F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight),
       lambda: off_kinks(r(2, 3, 4) * 30, [20.0, -20.0], 0.5), lambda: torch.rand(2, 3, 4), dict(pos_weight=lambda: torch.rand(4) + 0.5))
# Saturated probabilities (a sigmoid that rounded to 0 or 1): PyTorch clamps the logs at -100 and
# its gradient (p - t) / max(p(1 - p), 1e-12) stays finite. The target is not differentiated here
# (d/dt = log(1 - p) - log(p) is ±100 by the clamp, a convention of its own).
L_case("bce_edge", dict(loss="binary_cross_entropy", reduction="sum"), lambda x, t: F.binary_cross_entropy(x, t, reduction="sum"),
       lambda: torch.tensor([1e-3, 0.999, 0.5, 0.25, 0.0, 1.0, 0.2]), lambda: torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.3]),
       target_grad=False)

a_, b_ = lambda: r(3, 4), lambda: r(3, 4)
far = lambda: off_kinks(r(3, 4) * 2, [0.0, 1.0, -1.0, 0.5, -0.5, 0.7, -0.7], 0.03)
for red in ("mean", "sum", "none"):
    L_case(f"mse_{red}", dict(loss="mse_loss", reduction=red), lambda x, t, red=red: F.mse_loss(x, t, reduction=red), a_, b_)
    L_case(f"l1_{red}", dict(loss="l1_loss", reduction=red), lambda x, t, red=red: F.l1_loss(x, t, reduction=red),
           far, lambda: torch.zeros(3, 4))
    for beta in (1.0, 0.5):
        L_case(f"smooth_l1_b{beta}_{red}", dict(loss="smooth_l1_loss", reduction=red, beta=beta),
               lambda x, t, red=red, beta=beta: F.smooth_l1_loss(x, t, beta=beta, reduction=red), far, lambda: torch.zeros(3, 4))
    for delta in (1.0, 0.7):
        L_case(f"huber_d{delta}_{red}", dict(loss="huber_loss", reduction=red, delta=delta),
               lambda x, t, red=red, delta=delta: F.huber_loss(x, t, delta=delta, reduction=red), far, lambda: torch.zeros(3, 4))
L_case("smooth_l1_b0", dict(loss="smooth_l1_loss", reduction="mean", beta=0.0),
       lambda x, t: F.smooth_l1_loss(x, t, beta=0.0), far, lambda: torch.zeros(3, 4))
# Non-zero targets for the piecewise losses: the target gradient is the negated input gradient.
L_case("huber_target", dict(loss="huber_loss", reduction="mean", delta=1.0), lambda x, t: F.huber_loss(x, t),
       lambda: r(3, 4) * 2, lambda: r(3, 4) * 0.01)

lp = lambda: torch.log_softmax(r(4, 5), 1)
tp = lambda: torch.softmax(r(4, 5) * 2, 1)
for red in ("batchmean", "sum", "mean", "none"):
    L_case(f"kl_{red}", dict(loss="kl_div", reduction=red, log_target=False),
           lambda x, t, red=red: F.kl_div(x, t, reduction=red), lp, tp)
    L_case(f"kl_log_target_{red}", dict(loss="kl_div", reduction=red, log_target=True),
           lambda x, t, red=red: F.kl_div(x, t, reduction=red, log_target=True), lp, lambda: torch.log_softmax(r(4, 5), 1))
L_case("kl_zero_target", dict(loss="kl_div", reduction="batchmean", log_target=False),
       lambda x, t: F.kl_div(x, t, reduction="batchmean"), lp,
       lambda: torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.3, 0.0, 0.6]]),
       target_grad=False)  # d/dt of t·log t is -inf at t = 0
S.save()
diag_report()
