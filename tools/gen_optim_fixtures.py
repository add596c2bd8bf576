#!/usr/bin/env python3
"""PyTorch reference trajectories for cnnkit-optim (optimizers, LR schedulers, clipping).

Run from the workspace root with a Python that has torch (2.x, CPU is enough):

    python tools/gen_optim_fixtures.py

Writes tests/fixtures/optim/*.safetensors (read by crates/cnnkit-optim/tests/). Every file
holds the problem's inputs and the trajectory torch produced:

    init.{k}, a.{k}, c.{k}   initial value and loss coefficients of parameter k (w, b, u)
    traj.{k}                 (STEPS, *shape): parameter k after each step
    lr                       (STEPS + 1, groups): every group's lr after construction and after
                             each step (schedulers: after scheduler.step())
    momentum                 (STEPS + 1, groups): momentum / beta1 (OneCycleLR fixtures)
    metrics                  (STEPS,): the metric fed to ReduceLROnPlateau
    final_state.{i}.{name}   torch's optimizer.state_dict()["state"] after the last step

The loss of parameter k is  sum(0.05·p⁴ + 0.5·a·p² + c·p)  (a > 0, so it is convex), i.e.
grad = 0.2·p³ + a·p + c, computed by autograd. Parameter "u" (where present) is never used
in the loss, so its grad stays None and optimizers must skip it. The Rust tests rebuild the
same loss with cnnkit tensors and compare every step.

No dependency beyond torch: safetensors is written by hand (8-byte little-endian header
length, JSON header, raw little-endian data).
"""

import json
import os
import struct

import torch

STEPS = 20
LONG_STEPS = 1000
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "optim")
SHAPES = {"w": (3, 4), "b": (4,), "u": (2,)}


def save_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} in the safetensors format (F64/F32/I64)."""
    names = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def problem(seed, keys=("w", "b"), dtype=torch.float64):
    """Initial parameters and loss coefficients, from a seeded torch generator."""
    g = torch.Generator().manual_seed(seed)
    init, a, c = {}, {}, {}
    for k in keys:
        s = SHAPES[k]
        init[k] = torch.randn(s, generator=g, dtype=torch.float64).to(dtype)
        a[k] = (torch.rand(s, generator=g, dtype=torch.float64) + 0.5).to(dtype)
        c[k] = (torch.randn(s, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    params = {k: init[k].clone().requires_grad_(True) for k in keys}
    return params, init, a, c


def loss_fn(params, a, c):
    total = 0
    for k, p in params.items():
        if k == "u":
            continue  # never used: its grad stays None
        total = total + (0.05 * p**4 + 0.5 * a[k] * p * p + c[k] * p).sum()
    return total


def group_values(opt, name):
    vals = []
    for g in opt.param_groups:
        if name == "momentum":
            vals.append(g["betas"][0] if "betas" in g else g["momentum"])
        else:
            vals.append(g[name])
    return vals


def run(name, seed, make_opt, make_sched=None, keys=("w", "b"), dtype=torch.float64, metrics=None, record_momentum=False):
    params, init, a, c = problem(seed, keys, dtype)
    opt = make_opt(params)
    sched = make_sched(opt) if make_sched else None
    traj = {k: [] for k in keys}
    lrs = [group_values(opt, "lr")]
    moms = [group_values(opt, "momentum")] if record_momentum else None
    for step in range(STEPS):
        opt.zero_grad()
        loss_fn(params, a, c).backward()
        opt.step()
        if sched is not None:
            if metrics is not None:
                sched.step(metrics[step])
            else:
                sched.step()
        for k in keys:
            traj[k].append(params[k].detach().clone())
        lrs.append(group_values(opt, "lr"))
        if record_momentum:
            moms.append(group_values(opt, "momentum"))
    out = {}
    for k in keys:
        out[f"init.{k}"] = init[k]
        out[f"a.{k}"] = a[k]
        out[f"c.{k}"] = c[k]
        out[f"traj.{k}"] = torch.stack(traj[k])
        assert torch.isfinite(out[f"traj.{k}"]).all(), name
        assert out[f"traj.{k}"].abs().max() < 50, (name, out[f"traj.{k}"].abs().max())
    out["lr"] = torch.tensor(lrs, dtype=torch.float64)
    if record_momentum:
        out["momentum"] = torch.tensor(moms, dtype=torch.float64)
    if metrics is not None:
        out["metrics"] = torch.tensor(metrics, dtype=torch.float64)
    for i, st in opt.state_dict()["state"].items():
        for sname, v in st.items():
            out[f"final_state.{i}.{sname}"] = torch.as_tensor(v).to(torch.float64) if sname == "step" else v
    save_safetensors(os.path.join(OUT, f"{name}.safetensors"), out, {"torch": torch.__version__})


def single(cls, **kw):
    kw.setdefault("foreach", False)
    return lambda p: cls(list(p.values()), **kw)


def sgd_groups(p):
    return torch.optim.SGD(
        [{"params": [p["w"]], "lr": 0.1, "weight_decay": 0.01}, {"params": [p["b"]], "lr": 0.02, "weight_decay": 0.0}],
        lr=0.5, momentum=0.9, foreach=False,
    )


def adam_groups(p):
    return torch.optim.Adam(
        [{"params": [p["w"]], "lr": 0.05, "weight_decay": 0.1}, {"params": [p["b"]], "lr": 0.01, "weight_decay": 0.0, "betas": (0.5, 0.9)}],
        lr=0.5, foreach=False,
    )


def two_groups_sgd(lr0=0.1, lr1=0.05, **kw):
    return lambda p: torch.optim.SGD([{"params": [p["w"]], "lr": lr0}, {"params": [p["b"]], "lr": lr1}], foreach=False, **kw)


def optimizers():
    O = torch.optim
    run("sgd_plain", 1, single(O.SGD, lr=0.1))
    run("sgd_momentum", 2, single(O.SGD, lr=0.05, momentum=0.9))
    run("sgd_nesterov_wd", 3, single(O.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01))
    run("sgd_dampening", 4, single(O.SGD, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.001))
    run("sgd_maximize", 5, single(O.SGD, lr=0.01, momentum=0.5, maximize=True))
    run("adam", 6, single(O.Adam, lr=0.05), keys=("w", "b", "u"))
    run("adam_amsgrad_wd", 7, single(O.Adam, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True))
    run("adamw", 8, single(O.AdamW, lr=0.05))
    run("adamw_amsgrad", 9, single(O.AdamW, lr=0.05, weight_decay=0.1, amsgrad=True, eps=1e-6))
    run("rmsprop", 10, single(O.RMSprop, lr=0.01))
    run("rmsprop_centered_momentum", 11, single(O.RMSprop, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01))
    run("adagrad", 12, single(O.Adagrad, lr=0.1))
    run("adagrad_decay", 13, single(O.Adagrad, lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1, eps=1e-8))
    run("adam_maximize", 18, single(O.Adam, lr=0.01, maximize=True))
    run("rmsprop_momentum_maximize", 19, single(O.RMSprop, lr=0.005, momentum=0.3, maximize=True))
    run("rmsprop_centered", 33, single(O.RMSprop, lr=0.01, centered=True))
    run("adagrad_maximize", 34, single(O.Adagrad, lr=0.05, maximize=True))
    run("sgd_groups", 14, sgd_groups)
    run("adam_groups", 15, adam_groups)
    run("adam_f32", 16, single(O.Adam, lr=0.05, amsgrad=True), dtype=torch.float32)
    run("sgd_momentum_f32", 17, single(O.SGD, lr=0.05, momentum=0.9, nesterov=True), dtype=torch.float32)


PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.92, 0.91, 0.9, 0.85, 0.86, 0.87, 0.88, 0.84, 0.845, 0.846, 0.847, 0.848, 0.849, 0.80, 0.81, 0.82, 0.83]
PLATEAU_MAX_METRICS = [0.1, 0.2, 0.22, 0.3, 0.31, 0.32, 0.33, 0.5, 0.52, 0.53, 0.54, 0.6, 0.6, 0.61, 0.7, 0.7, 0.71, 0.72, 0.8, 0.8]


def schedulers():
    S = torch.optim.lr_scheduler
    sgd = single(torch.optim.SGD, lr=0.1, momentum=0.9)
    run("sched_step", 20, two_groups_sgd(momentum=0.9), lambda o: S.StepLR(o, step_size=4, gamma=0.5))
    run("sched_multistep", 21, sgd, lambda o: S.MultiStepLR(o, milestones=[3, 7, 7, 12], gamma=0.3))
    run("sched_exponential", 22, sgd, lambda o: S.ExponentialLR(o, gamma=0.9))
    run("sched_cosine", 23, sgd, lambda o: S.CosineAnnealingLR(o, T_max=8, eta_min=0.001))
    run("sched_cosine_zero", 24, two_groups_sgd(momentum=0.9), lambda o: S.CosineAnnealingLR(o, T_max=20))
    run("sched_linear", 25, sgd, lambda o: S.LinearLR(o))
    run("sched_warm_restarts", 26, sgd, lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.01))
    run("sched_warm_restarts_mult1", 27, two_groups_sgd(momentum=0.9), lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5))
    run(
        "sched_onecycle_sgd", 28, two_groups_sgd(momentum=0.9),
        lambda o: S.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=STEPS), record_momentum=True,
    )
    run(
        "sched_onecycle_adam", 29, single(torch.optim.Adam, lr=0.01),
        lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, pct_start=0.25, anneal_strategy="linear", three_phase=True),
        record_momentum=True,
    )

    def sequential(o):
        warm = S.LinearLR(o, start_factor=0.1, total_iters=5)
        cos = S.CosineAnnealingLR(o, T_max=15, eta_min=0.001)
        return S.SequentialLR(o, [warm, cos], milestones=[5])

    run("sched_sequential", 30, sgd, sequential)
    run(
        "sched_plateau", 31, sgd,
        lambda o: S.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=2, threshold=0.01, cooldown=1, min_lr=0.01),
        metrics=PLATEAU_METRICS,
    )
    run(
        "sched_plateau_max_abs", 32, two_groups_sgd(momentum=0.9),
        lambda o: S.ReduceLROnPlateau(o, mode="max", factor=0.3, patience=1, threshold=0.05, threshold_mode="abs", min_lr=[0.02, 0.001]),
        metrics=PLATEAU_MAX_METRICS,
    )


def cosine_long():
    """PyTorch's recursive CosineAnnealingLR over a long horizon (lrs only): cnnkit's closed
    form must stay within 1e-6 relative of it."""
    out = {}
    for name, t_max, eta_min in (("t50_zero", 50, 0.0), ("t7_min", 7, 0.01)):
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min)
        lrs = [opt.param_groups[0]["lr"]]
        for _ in range(LONG_STEPS):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        out[f"lr.{name}"] = torch.tensor(lrs, dtype=torch.float64)
    save_safetensors(os.path.join(OUT, "sched_cosine_long.safetensors"), out, {"torch": torch.__version__})


def clipping():
    g = torch.Generator().manual_seed(40)
    grads = [torch.randn(s, generator=g, dtype=torch.float64) * 0.7 for s in [(3, 4), (5,), (2, 2, 2)]]
    out = {f"g.{i}": x for i, x in enumerate(grads)}
    cases = {"l2": 2.0, "l1": 1.0, "inf": float("inf"), "p3": 3.0, "p05": 0.5}
    for name, p in cases.items():
        for max_norm in (1.0, 100.0):
            ps = [x.clone().requires_grad_(True) for x in grads]
            for q, x in zip(ps, grads):
                q.grad = x.clone()
            total = torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type=p, foreach=False)
            key = f"norm.{name}.{int(max_norm)}"
            out[f"{key}.total"] = total.reshape(1).to(torch.float64)
            for i, q in enumerate(ps):
                out[f"{key}.g.{i}"] = q.grad
    ps = [x.clone().requires_grad_(True) for x in grads]
    for q, x in zip(ps, grads):
        q.grad = x.clone()
    torch.nn.utils.clip_grad_value_(ps, 0.5, foreach=False)
    for i, q in enumerate(ps):
        out[f"value.g.{i}"] = q.grad
    save_safetensors(os.path.join(OUT, "clip.safetensors"), out, {"torch": torch.__version__})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    optimizers()
    schedulers()
    cosine_long()
    clipping()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")
