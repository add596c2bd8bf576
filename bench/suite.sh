#!/usr/bin/env bash
# The performance table of BENCHMARKS.md in one sitting: cnnkit's `bench suite` and, when the
# reference venv exists, ../shared/bench/torch_baseline.py (PyTorch + ONNX Runtime) on the same
# workloads, then the ratio table (medians over REPS rounds).
#   set-up (once): python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision onnx onnxruntime
#   run:           bash bench/suite.sh            (THREADS=2, REPS=3 by default; QUICK=1 for a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-3}
PY=${PY:-/tmp/ref/bin/python}
BASE=${BASE:-../shared/bench/torch_baseline.py}
cargo build --release -q -p cnnkit-cli
bin=target/release/cnnkit
out=$(mktemp -d)
quick=""
[ -n "${QUICK:-}" ] && quick="--quick"
have_ref=""
if [ -x "$PY" ] && [ -f "$BASE" ]; then
  have_ref=1
  # MNIST-format files for torch_baseline.py's epoch (random images: the time does not depend on them).
  "$PY" - "$out/mnist" <<'PYEOF'
import gzip, os, struct, sys, numpy as np
d = sys.argv[1]; os.makedirs(d, exist_ok=True); r = np.random.RandomState(0)
for name, n in [("train", 60000), ("t10k", 10000)]:
    with gzip.open(f"{d}/{name}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + r.randint(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
    with gzip.open(f"{d}/{name}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + r.randint(0, 10, n, dtype=np.uint8).tobytes())
PYEOF
fi
for r in $(seq "$REPS"); do
  $bin bench suite --threads "$THREADS" $quick --json 2>/dev/null | tail -1 >> "$out/cnnkit"
  if [ -n "$have_ref" ]; then
    THREADS=$THREADS MNIST="$out/mnist" "$PY" "$BASE" micro mnist train infer 2>/dev/null >> "$out/torch" || true
    # PyTorch's peak memory for the resnet18 CIFAR training step, in a process of its own.
    THREADS=$THREADS "$PY" - >> "$out/torch" 2>/dev/null <<'PYEOF' || true
import os, resource, torch, torch.nn as nn, torch.nn.functional as F, torchvision.models as tvm
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
m = tvm.resnet18(num_classes=10); m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()
opt = torch.optim.SGD(m.parameters(), 0.01, momentum=0.9); x = torch.randn(32, 3, 32, 32); y = torch.randint(0, 10, (32,))
for _ in range(3):
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
print(f"resnet18_cifar_peak_rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}MiB")
PYEOF
  fi
done
python3 - "$out" <<'PYEOF'
import json, os, re, statistics, sys
d = sys.argv[1]
runs = [json.loads(l)["results"] for l in open(f"{d}/cnnkit") if l.strip()]
ours = {k: statistics.median(r[k]["value"] for r in runs) for k in runs[0]}
rss = statistics.median(r["resnet18_cifar_step"]["peak_rss_mb"] for r in runs)
lines = open(f"{d}/torch").read().splitlines() if os.path.exists(f"{d}/torch") else []
# Each workload's reference figures in round order (round i's cnnkit run came just before).
per_round = {}
def grab(prefix, pat, ort=False):
    vals = [float(re.search(pat, l).group(1)) for l in lines if l.startswith(prefix + " ") and (("onnxruntime" in l) == ort)]
    per_round[(prefix, ort)] = vals
    return statistics.median(vals) if vals else None
ref = {
    "conv_fwd": grab("conv3x3_64_56_b8_fwd", r"GFLOP/s=([\d.]+)"), "conv_fwd_bwd": grab("conv3x3_64_56_b8_fwdbwd", r"GFLOP/s=([\d.]+)"),
    "cifar_step": grab("cifar_seedcnn_b64", r"([\d.]+)ms/step"), "mnist_epoch": grab("mnist_seedcnn_epoch", r"([\d.]+)s "),
    "resnet18_cifar_step": grab("resnet18_cifar_b32", r"([\d.]+)ms/step"), "mobilenet_v2_step": grab("mobilenetv2_96_b16", r"([\d.]+)ms/step"),
    "resnet18_infer_b1": grab("resnet18_224_b1", r"([\d.]+)ms"), "mobilenet_v2_infer_b1": grab("mobilenet_v2_224_b1", r"([\d.]+)ms"),
    "resnet18_infer_b8": grab("resnet18_224_b8", r"images/s=([\d.]+)"),
}
ort = {"resnet18_infer_b1": grab("resnet18_224_b1", r"([\d.]+)ms", True), "mobilenet_v2_infer_b1": grab("mobilenet_v2_224_b1", r"([\d.]+)ms", True)}
ref_rounds = {k: per_round[p] for k, p in zip(ref, list(per_round)[:len(ref)])}
ort_rounds = {k: per_round[p] for k, p in zip(ort, list(per_round)[len(ref):])}
torch_rss = grab("resnet18_cifar_peak_rss", r"([\d.]+)MiB")
higher = {"conv_fwd", "conv_fwd_bwd", "resnet18_infer_b8"}
print("| workload | unit | cnnkit | PyTorch | ONNX Runtime | cnnkit speed vs PyTorch | vs ONNX Runtime | per-round median |")
print("|---|---|---|---|---|---|---|---|")
fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
def round_ratio(k, refs):
    # Median over rounds of (reference / cnnkit) within the round: robust to the machine
    # drifting between rounds, where the ratio of the two medians is not.
    pairs = list(zip((r[k]["value"] for r in runs), refs or []))
    if not pairs:
        return "n/a"
    return f"{statistics.median((c / r) if k in higher else (r / c) for c, r in pairs):.2f}×"
for k, v in ours.items():
    t, o = ref.get(k), ort.get(k)
    sp = lambda r: "n/a" if r is None else (f"{v / r:.2f}×" if k in higher else f"{r / v:.2f}×")
    rr = round_ratio(k, ort_rounds.get(k)) + " ORT" if k in ort else round_ratio(k, ref_rounds.get(k))
    print(f"| {runs[0][k]['workload']} | {runs[0][k]['unit']} | {v:.1f} | {fmt(t)} | {fmt(o)} | {sp(t)} | {sp(o)} | {rr} |")
print(f"| resnet18 CIFAR training, batch 32 | peak RSS MiB | {rss:.0f} | {fmt(torch_rss)} | | {'n/a' if torch_rss is None else f'{torch_rss / rss:.2f}× less' if rss < torch_rss else f'{rss / torch_rss:.2f}× more'} | | |")
print("(speed ratio > 1: cnnkit is faster; time ratios are reference time / cnnkit time; the last column is the")
print(" median over rounds of each round's ratio, cnnkit run just before the reference)")
PYEOF
