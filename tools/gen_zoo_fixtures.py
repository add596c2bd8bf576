#!/usr/bin/env python3
"""Writes the model-zoo fixtures: for every torchvision architecture cnnkit builds, the outputs
of torchvision's model (eval mode, float64) on a formula input with formula weights, the
state_dict keys and shapes, and the torch-exported ONNX graph (parameters as named graph inputs,
so the file stays small; the Rust test fills them from the same formula).

Both sides compute every weight from its state_dict name and element index (`formula` below),
so no full-size weights are committed.

Run: /tmp/ref/bin/python tools/gen_zoo_fixtures.py   (torch, torchvision, onnx, safetensors)
Writes tests/fixtures/zoo/outputs.safetensors and tests/fixtures/zoo/onnx/NAME.onnx."""
import json, math, os, sys
import numpy as np, torch, torchvision.models as tvm
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "zoo")
NUM_CLASSES = 10

def fnv1a(s):
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h

def uniform01(name, n):
    """u_i = ((i·2654435761 + fnv1a(name)) mod 2^32) / 2^32, exact in u64 arithmetic."""
    i = np.arange(n, dtype=np.uint64)
    v = (i * np.uint64(2654435761) + np.uint64(fnv1a(name))) & np.uint64(0xFFFFFFFF)
    return v.astype(np.float64) / 4294967296.0

def formula(name, shape):
    """The value of every state_dict entry, as float64 (cast to the tensor's dtype)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform01(name, n)
    if name.endswith("num_batches_tracked"):
        v = np.zeros(n)
    elif name.endswith("running_var"):
        v = u + 0.5
    elif name.endswith("running_mean"):
        v = (u - 0.5) * 0.2
    elif len(shape) == 1 and name.endswith("weight"):
        v = u * 0.5 + 0.5
    elif len(shape) <= 1:
        v = (u - 0.5) * 0.2
    else:
        fan_in = n // shape[0]
        v = (u - 0.5) * (2.0 * math.sqrt(3.0 / fan_in))
    return v.reshape(shape)

def cifar_resnet18():
    m = tvm.resnet18(num_classes=NUM_CLASSES)
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m

# (name, constructor, batch, side). AlexNet and VGG run at 224×224: their adaptive pools only
# export to ONNX when the output grid divides the feature map (6×6 and 7×7 there).
MODELS = [(n, (lambda n=n: getattr(tvm, n)(num_classes=NUM_CLASSES)), 1, 224) for n in [
    "alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]] + [(n, (lambda n=n: getattr(tvm, n)(num_classes=NUM_CLASSES)), 2, 64) for n in [
    "resnet18", "resnet34", "resnet50", "resnet101",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "squeezenet1_1", "efficientnet_b0", "densenet121"]] + [("resnet18_cifar", cifar_resnet18, 2, 32)]

def main():
    # torch folds each BatchNorm into the preceding Conv in eval-mode export, renaming the
    # weights ("onnx::Conv_123"); skipping that pass keeps every parameter under its
    # state_dict name, so the test can fill the graph inputs from the formula. Fully
    # exported small models (weights included, BN folded) are the ONNX crate's fixtures.
    torch._C._jit_pass_onnx_eval_peephole = lambda graph, params, *a, **k: params
    only = sys.argv[1:]
    os.makedirs(os.path.join(OUT, "onnx"), exist_ok=True)
    tensors, meta = {}, {}
    for name, ctor, batch, side in MODELS:
        if only and name not in only:
            continue
        torch.manual_seed(0)
        m = ctor().eval()
        sd = m.state_dict()
        with torch.no_grad():
            for k, t in sd.items():
                t.copy_(torch.from_numpy(formula(k, list(t.shape)).astype(np.float32)).to(t.dtype))
        x = torch.from_numpy(((uniform01("input", batch * 3 * side * side) - 0.5) * 2.0).astype(np.float32).reshape(batch, 3, side, side))
        with torch.no_grad():
            y = m.double()(x.double()).float()
        tensors[f"{name}.output"] = y.numpy()
        meta[name] = {"input": [batch, 3, side, side], "keys": [[k, list(t.shape)] for k, t in sd.items()]}
        # The ONNX graph with the parameters as graph inputs named by their state_dict keys.
        m = m.float()
        path = os.path.join(OUT, "onnx", f"{name}.onnx")
        torch.onnx.export(m, x, path, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False, export_params=False)
        print(f"{name:20s} out[0,:3]={y[0, :3].tolist()}  onnx {os.path.getsize(path)} B", flush=True)
    path = os.path.join(OUT, "outputs.safetensors")
    save_file(tensors, path, metadata={"models": json.dumps(meta)})

if __name__ == "__main__":
    main()
