#!/usr/bin/env bash
# Runs cnnkit's benchmarks and, when the PyTorch venv exists, the reference workloads of
# ../shared/bench/torch_baseline.py in the same sitting, and prints the ratio table.
#   set-up (once): python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch torchvision onnx onnxruntime
#   run:           bash bench/compare.sh            (THREADS=2 by default; REPS=3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-3}
PY=${PY:-/tmp/ref/bin/python}
BASE=${BASE:-../shared/bench/torch_baseline.py}
cargo build --release -q
bin=target/release/cnnkit
out=$(mktemp -d)
for r in $(seq "$REPS"); do
  $bin bench conv2d --iters 10 --threads "$THREADS" --json 2>/dev/null | tail -1 >> "$out/conv_fwd"
  $bin bench conv2d --backward --iters 5 --threads "$THREADS" --json 2>/dev/null | tail -1 >> "$out/conv_fb"
  $bin bench train-step --model cifar-cnn --batch-size 64 --iters 20 --threads "$THREADS" --json 2>/dev/null | tail -1 >> "$out/cifar"
  if [ -x "$PY" ] && [ -f "$BASE" ]; then
    THREADS=$THREADS "$PY" "$BASE" micro train 2>/dev/null >> "$out/torch" || true
  fi
done
python3 - "$out" <<'PYEOF'
import json, statistics, sys, re, os
d = sys.argv[1]
def js(name, key):
    return statistics.median(json.loads(l)[key] for l in open(f"{d}/{name}") if l.strip())
ours = {"conv_fwd": js("conv_fwd", "gflops"), "conv_fb": js("conv_fb", "gflops"), "cifar": js("cifar", "median_ms")}
torch = {}
if os.path.exists(f"{d}/torch"):
    lines = open(f"{d}/torch").read().splitlines()
    def grab(prefix, pat):
        vals = [float(re.search(pat, l).group(1)) for l in lines if l.startswith(prefix)]
        return statistics.median(vals) if vals else None
    torch = {"conv_fwd": grab("conv3x3_64_56_b8_fwd ", r"GFLOP/s=([\d.]+)"), "conv_fb": grab("conv3x3_64_56_b8_fwdbwd", r"GFLOP/s=([\d.]+)"), "cifar": grab("cifar_seedcnn_b64", r"([\d.]+)ms/step")}
rows = [("Conv2d 64→64 3×3, 8×64×56×56, forward", "conv_fwd", "GFLOP/s", True),
        ("same, forward + backward", "conv_fb", "GFLOP/s", True),
        ("cifar-cnn training step, batch 64", "cifar", "ms/step", False)]
print("| workload | unit | cnnkit | PyTorch | ratio (cnnkit vs PyTorch, >1 = faster) |")
print("|---|---|---|---|---|")
for name, k, unit, higher in rows:
    t = torch.get(k)
    ratio = (ours[k] / t if higher else t / ours[k]) if t else None
    print(f"| {name} | {unit} | {ours[k]:.1f} | {t if t is not None else 'n/a'} | {f'{ratio:.2f}×' if ratio else 'n/a'} |")
PYEOF
