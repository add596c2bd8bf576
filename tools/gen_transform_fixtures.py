#!/usr/bin/env python3
"""torchvision reference outputs for cnnkit's transforms (src/transforms.rs).

Set-up (once): python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision
Run from the repository root: /tmp/ref/bin/python tools/gen_transform_fixtures.py
Writes tests/fixtures/transforms.safetensors (read by tests/transforms.rs): "<case>.x" input
(C, H, W) float32 in [0, 1], "<case>.y" torchvision's output; deterministic functional forms."""
import torch
import torchvision.transforms.functional as F
from safetensors.torch import save_file

torch.manual_seed(0)
x = torch.rand(3, 11, 14)
g1 = torch.rand(1, 9, 8)
u8 = torch.randint(0, 256, (5, 6, 3), dtype=torch.uint8)
cases = {
    "resize_up": (x, F.resize(x, [17, 23], antialias=False)),
    "resize_down": (x, F.resize(x, [6, 5], antialias=False)),
    "center_crop": (x, F.center_crop(x, [6, 9])),
    "center_crop_pad": (g1, F.center_crop(g1, [12, 11])),
    "crop": (x, F.crop(x, 2, 3, 5, 7)),
    "crop_outside": (x, F.crop(x, -2, -3, 8, 9)),
    "hflip": (x, F.hflip(x)),
    "vflip": (x, F.vflip(x)),
    "gray1": (x, F.rgb_to_grayscale(x, 1)),
    "gray3": (x, F.rgb_to_grayscale(x, 3)),
    "normalize": (x, F.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
    "brightness": (x, F.adjust_brightness(x, 1.4)),
    "contrast": (x, F.adjust_contrast(x, 0.6)),
    "saturation": (x, F.adjust_saturation(x, 1.7)),
    "hue": (x, F.adjust_hue(x, 0.23)),
    "hue_neg": (x, F.adjust_hue(x, -0.41)),
    "to_tensor": (u8.float(), F.to_tensor(u8.numpy())),
    "resized_crop": (x, F.resized_crop(x, 1, 2, 7, 9, [12, 10], antialias=False)),
    "rotate_33": (x, F.rotate(x, 33.0)),
    "rotate_neg71": (x, F.rotate(x, -71.0)),
}
t = {}
for k, (a, b) in cases.items():
    t[f"{k}.x"] = a.contiguous().clone()
    t[f"{k}.y"] = b.contiguous().clone()
save_file(t, "tests/fixtures/transforms.safetensors")
print("wrote", len(cases), "cases")
