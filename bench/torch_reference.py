"""PyTorch reference timings for ``python -m numpy_amaml bench`` (standalone; not part of the package).

One MAML meta-iteration = second-order MAML, 1 inner SGD step, float32, meta-gradient
averaged over the tasks, then an Adam step (lr 0.001) on θ. Same configurations and
synthetic fixed data shapes as numpy_amaml/commands/bench.py (the data pipeline is not timed):

  sinusoid   MLP 1-40-40-1 ReLU, MSE, B=25 tasks, K=10 support + 10 query points, α=0.01
  CNN max-pool / strided: MAML's Omniglot CNN, 4 × [conv3×3 64ch pad 1 → BatchNorm (batch
             statistics, learnable γ/β, no running stats) → ReLU → 2×2 max-pool (or stride-2
             conv instead of the pool)], mean over space, Linear(64→5), softmax cross-entropy,
             5-way 1-shot, 1 query per class, B=32 tasks, α=0.4

Two implementations per configuration:
  loop  a Python loop over tasks, inner gradient by torch.autograd.grad(create_graph=True)
  vmap  torch.func: functional_call + vmap over tasks of the inner-step function, torch.func.grad through it

Run with the torch venv (see bench/README.md):  /work/torchvenv/bin/python bench/torch_reference.py
On a machine with an NVIDIA GPU, ``--device cuda`` times the same code there (to set beside
``NUMPY_AMAML_BACKEND=cupy python -m numpy_amaml bench``).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # the repository root
from numpy_amaml.commands.bench import cpu_model  # noqa: E402  (NumPy-only; describes the machine alike)


def sinusoid_problem(B=25, K=10, Q=10, seed=0):
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    rng = np.random.default_rng(seed)
    x_s, x_q = rng.uniform(-5, 5, (B, K, 1)), rng.uniform(-5, 5, (B, Q, 1))
    data = [torch.tensor(a, dtype=torch.float32, device=DEVICE) for a in (x_s, np.sin(x_s), x_q, np.sin(x_q))]
    return model.to(DEVICE), data, F.mse_loss, 0.01


class BatchStatNorm(nn.Module):
    """Batch norm with batch statistics (biased variance, eps 1e-5, learnable γ/β, no running
    stats), written with plain ops: numerically the same as nn.BatchNorm2d(track_running_stats=False),
    but torch 2.13's grad(vmap(grad(...))) through the native batch_norm kernel gives wrong
    meta-gradients (≈5 % off in float64 too; the loop agrees with this version to 1e-16)."""

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, x):                              # x (N, C, H, W)
        mean = x.mean((0, 2, 3), keepdim=True)
        var = (x - mean).square().mean((0, 2, 3), keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


NATIVE_BN = False   # --native-bn: nn.BatchNorm2d instead (loop correct, torch.func meta-gradient wrong)
DEVICE = "cpu"      # --device


def omniglot_problem(downsample, B=32, ways=5, shots=1, queries=1, seed=0):
    stride = 2 if downsample == "stride" else 1
    layers, c_in = [], 1
    for _ in range(4):
        norm = nn.BatchNorm2d(64, track_running_stats=False) if NATIVE_BN else BatchStatNorm(64)
        layers += [nn.Conv2d(c_in, 64, 3, stride=stride, padding=1), norm, nn.ReLU()]
        if downsample == "maxpool":
            layers.append(nn.MaxPool2d(2))           # floor: 28 → 14 → 7 → 3 → 1
        c_in = 64
    layers += [nn.Flatten(2), MeanLast(), nn.Linear(64, ways)]
    model = nn.Sequential(*layers)
    for m in model.modules():                          # MAML's init: Xavier-uniform weights, zero biases
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    rng = np.random.default_rng(seed)
    x_s = rng.random((B, ways * shots, 1, 28, 28)) < 0.1
    x_q = rng.random((B, ways * queries, 1, 28, 28)) < 0.1
    y_s = np.tile(np.repeat(np.arange(ways), shots), (B, 1))
    y_q = np.tile(np.repeat(np.arange(ways), queries), (B, 1))
    data = [torch.tensor(x_s, dtype=torch.float32, device=DEVICE), torch.tensor(y_s, device=DEVICE),
            torch.tensor(x_q, dtype=torch.float32, device=DEVICE), torch.tensor(y_q, device=DEVICE)]
    return model.to(DEVICE), data, F.cross_entropy, 0.4


class MeanLast(nn.Module):
    def forward(self, x):                              # (N, C, H·W) → (N, C): mean over space
        return x.mean(-1)


def meta_grad_loop(model, data, loss_fn, alpha, params):
    """Per-task Python loop; second order through torch.autograd.grad(create_graph=True)."""
    x_s, y_s, x_q, y_q = data
    total = 0.0
    for i in range(x_s.shape[0]):
        inner = loss_fn(functional_call(model, params, (x_s[i],)), y_s[i])
        g = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        fast = {k: p - alpha * gk for (k, p), gk in zip(params.items(), g)}
        total = total + loss_fn(functional_call(model, fast, (x_q[i],)), y_q[i])
    return dict(zip(params, torch.autograd.grad(total / x_s.shape[0], list(params.values()))))


def meta_grad_vmap(model, data, loss_fn, alpha, params):
    """torch.func: vmap over tasks of the one-step adapted query loss, grad of the mean."""
    def support_loss(p, x, y):
        return loss_fn(functional_call(model, p, (x,)), y)

    def query_loss_after_step(p, x_s, y_s, x_q, y_q):
        g = grad(support_loss)(p, x_s, y_s)
        return support_loss({k: p[k] - alpha * g[k] for k in p}, x_q, y_q)

    def meta_loss(p):
        return vmap(query_loss_after_step, in_dims=(None, 0, 0, 0, 0))(p, *data).mean()

    params = {k: v.detach() for k, v in params.items()}
    return grad(meta_loss)(params)


IMPLEMENTATIONS = {"loop (autograd.grad)": meta_grad_loop, "torch.func (vmap)": meta_grad_vmap}
CASES = {
    "sinusoid MLP, B=25, K=10 shots": sinusoid_problem,
    "CNN max-pool, 5-way 1-shot, B=32": lambda: omniglot_problem("maxpool"),
    "CNN strided, 5-way 1-shot, B=32": lambda: omniglot_problem("stride"),
}


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_case(make_problem, meta_grad, warmup, repeats):
    """Median seconds per meta-iteration (meta-gradient + Adam step)."""
    torch.manual_seed(0)
    model, data, loss_fn, alpha = make_problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.001)

    def step():
        grads = meta_grad(model, data, loss_fn, alpha, dict(model.named_parameters()))
        for name, p in model.named_parameters():
            p.grad = grads[name]
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def max_grad_difference(make_problem):
    """max |loop − vmap| / max |loop| over the meta-gradient entries at the same θ (a sanity check)."""
    torch.manual_seed(0)
    model, data, loss_fn, alpha = make_problem()
    params = dict(model.named_parameters())
    a = meta_grad_loop(model, data, loss_fn, alpha, params)
    b = meta_grad_vmap(model, data, loss_fn, alpha, params)
    return max((a[k] - b[k]).abs().max().item() for k in a) / max(a[k].abs().max().item() for k in a)


def machine_description():
    device = "cpu" if DEVICE == "cpu" else f"cuda on {torch.cuda.get_device_name(0)}"
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"NumPy {np.__version__}, torch threads {torch.get_num_threads()}, device {device}, float32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per row (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--only", default=None, help="run only rows whose name contains this text")
    parser.add_argument("--impl", default=None, help="run only implementations whose name contains this text "
                                                     "(e.g. vmap, loop); skips the |Δ meta-grad| check")
    parser.add_argument("--native-bn", action="store_true", help="nn.BatchNorm2d instead of BatchStatNorm")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the tensors live")
    args = parser.parse_args()
    global NATIVE_BN, DEVICE
    NATIVE_BN, DEVICE = args.native_bn, args.device
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    print(f"machine: {machine_description()}")
    print("load average (1, 5, 15 min): %.2f %.2f %.2f" % os.getloadavg())
    print("env: " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in
                              ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")))
    print(f"batch norm: {'nn.BatchNorm2d(track_running_stats=False)' if NATIVE_BN else 'BatchStatNorm (plain ops)'}")
    print(f"{'configuration':34s} {'implementation':22s} {'s / meta-iter':>14s}")
    for name, make_problem in CASES.items():
        if args.only is not None and args.only.lower() not in name.lower():
            continue
        for impl, meta_grad in IMPLEMENTATIONS.items():
            if args.impl is not None and args.impl.lower() not in impl.lower():
                continue
            seconds = time_case(make_problem, meta_grad, args.warmup, args.repeats)
            print(f"{name:34s} {impl:22s} {seconds:14.4f}", flush=True)
        if args.impl is None:
            print(f"{'':34s} {'rel. |Δ meta-grad|':22s} {max_grad_difference(make_problem):14.2e}", flush=True)
    print("load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
