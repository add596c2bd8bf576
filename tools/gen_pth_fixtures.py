"""Writes the PyTorch .pth/.pt and numpy .npy fixtures read by crates/cnnkit-io/tests.

Run by hand with a Python that has torch, numpy and safetensors:
    python tools/gen_pth_fixtures.py
Outputs go to tests/fixtures/pth/ and are committed. `expected.safetensors` holds, for every
fixture tensor, the value cnnkit must produce, under "<fixture stem>/<dotted key path>", already
converted the way cnnkit converts dtypes (int32/int16/int8 -> int64, bool -> uint8) and made
contiguous.
"""

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pth")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
expected = {}

# Where the malicious pickles would leave proof that they ran; the tests assert it never exists.
MARKER = "/tmp/cnnkit_io_pwned_marker"


def cnnkit_view(t):
    """The tensor cnnkit must produce for `t` (its dtype mapping, contiguous, no grad)."""
    t = t.detach().contiguous().clone()
    if t.dtype in (torch.int32, torch.int16, torch.int8):
        t = t.to(torch.int64)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t


def record(stem, obj, prefix=""):
    """Adds every tensor inside obj (dicts/lists/tuples, recursively) to the expected set."""
    if isinstance(obj, torch.Tensor):
        expected[f"{stem}/{prefix}"] = cnnkit_view(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            record(stem, v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            record(stem, v, f"{prefix}.{i}" if prefix else str(i))


def save(stem, obj, **kw):
    torch.save(obj, os.path.join(OUT, stem + ".pth"), **kw)
    record(stem, obj)


class SmallCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


model = SmallCnn()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
# One training step so BatchNorm's running stats, num_batches_tracked and the momentum buffers
# hold non-trivial values.
loss = model(torch.randn(2, 3, 4, 4)).square().mean()
loss.backward()
opt.step()
sd = model.state_dict()

save("cnn_zip", sd)
save("cnn_legacy", sd, _use_new_zipfile_serialization=False)
save("checkpoint", {"epoch": 3, "state_dict": sd, "optimizer": opt.state_dict(), "best_acc": 0.875, "note": "ckpt"})
save("dataparallel", OrderedDict(("module." + k, v) for k, v in sd.items()))

dtypes = {
    "f16": torch.randn(3, 2).half(),
    "bf16": torch.randn(5).bfloat16(),
    "f64": torch.randn(2, 2, dtype=torch.float64),
    "i64": torch.tensor([-(2**40), 7, 0]),
    "i32": torch.tensor([[-5, 2**30], [3, 0]], dtype=torch.int32),
    "i16": torch.tensor([-300, 300], dtype=torch.int16),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
}
save("dtypes", dtypes)

base = torch.arange(12, dtype=torch.float32)
views = {
    "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
    "a": base[1:5],
    "b": base[4:10].view(2, 3),
    "every_other": base[::2],
    "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
}
save("views", views)
save("views_legacy", views, _use_new_zipfile_serialization=False)

params = {
    "weight": torch.nn.Parameter(torch.randn(2, 2)),
    "frozen": torch.nn.Parameter(torch.randn(3), requires_grad=False),
    "plain": torch.randn(2),
}
save("params", params)

small = {"x": torch.randn(4), "n": 1, "pi": 3.25, "s": "hello", "ok": True, "none": None, "list": [1, 2.0, "three"], "tup": (1, (2, 3))}
save("proto2", small, pickle_protocol=2)
save("proto4", small, pickle_protocol=4)
save("proto5", small, pickle_protocol=5)


def write_zip(path, prefix, pkl):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        z.writestr(f"{prefix}/version", "3\n")


# GLOBAL 'os system' + REDUCE: unpickling this with a normal unpickler runs a shell command.
evil_cmd = f"touch {MARKER}".encode()
evil_global = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(evil_cmd)) + evil_cmd + b"\x85R."
write_zip(os.path.join(OUT, "malicious_zip.pth"), "archive", evil_global)
# The same attack through protocol 4's STACK_GLOBAL with builtins.eval.
evil_src = f"open('{MARKER}', 'w')".encode()
evil_stack = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c" + bytes([len(evil_src)]) + evil_src + b"\x85R."
write_zip(os.path.join(OUT, "malicious_stack_global.pth"), "archive", evil_stack)
# Legacy layout: magic, protocol version and sys_info pickles, then the malicious object pickle.
with open(os.path.join(OUT, "malicious_legacy.pth"), "wb") as f:
    pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
    f.write(b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(evil_cmd)) + evil_cmd + b"\x85R.")
    pickle.dump([], f, protocol=2)
for stem in ("malicious_zip", "malicious_stack_global", "malicious_legacy"):
    # Sanity check: torch's own safe loader refuses them too.
    try:
        torch.load(os.path.join(OUT, stem + ".pth"), weights_only=True)
        raise SystemExit(f"{stem}: torch accepted it")
    except SystemExit:
        raise
    except Exception:
        pass
assert not os.path.exists(MARKER)

save_file({k: v for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))

# numpy fixtures.
arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
np.save(os.path.join(OUT, "f32.npy"), arr)
np.save(os.path.join(OUT, "f64.npy"), arr.astype(np.float64))
np.save(os.path.join(OUT, "fortran.npy"), np.asfortranarray(arr))
np.save(os.path.join(OUT, "i64.npy"), np.arange(5))
np.save(os.path.join(OUT, "big_endian.npy"), arr.astype(">f4"))
np.save(os.path.join(OUT, "scalar.npy"), np.float32(1.5))
for version in ((2, 0), (3, 0)):
    with open(os.path.join(OUT, f"f32_v{version[0]}.npy"), "wb") as f:
        np.lib.format.write_array(f, arr, version=version)

total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, {len(expected)} expected tensors")
