"""``python -m numpy_amaml gradcheck``: check every hand-written derivative, print a table.

In float64, on inputs with a leading task axis (B tasks computed as one batch), it runs
    numpy_amaml.gradcheck.check_layer            for every layer in LAYER_CASES
    numpy_amaml.gradcheck.check_loss             for both losses (LOSS_CASES)
    check_model_gradient / check_model_hvp       for the models in MODEL_CASES
and prints one row per check: component, check, relative error, pass/fail at --tol.
The exit code is 0 when every check passes, 1 otherwise.

    backward:<name>     backward vs central finite differences of ⟨forward, dy⟩
    r_forward           the JVP vs a directional finite difference of forward
    r_backward:<name>   the R-op of backward vs a directional finite difference of backward
    gradient            the model's gradient vs finite differences of Σ_tasks loss
    hvp                 the exact H v vs a finite difference of the gradient along v
    hvp symmetry        |⟨u, Hv⟩ − ⟨v, Hu⟩| relative to their size (H is symmetric)

The inputs are random (seeded by --seed) but kept away from the kinks of ReLU and
max-pooling, where a finite difference would straddle a non-differentiable point: layer
inputs are drawn that way, and a model's check point is redrawn until every ReLU input
and max-pool gap inside the model is at least KINK_MARGIN from its kink (kink_margin).
"""
import math
import sys
import time

import numpy as np

from numpy_amaml import backend, gradcheck, layers, losses, architectures

TASKS = 2          # the task axis B of every input
SAMPLES = 3        # samples per task N


# ---- random inputs ------------------------------------------------------------------------

def _normal(rng, *shape):
    return backend.asarray(rng.standard_normal(shape))


def _away_from_zero(rng, *shape, margin=0.1):
    """|x| ≥ margin: ReLU's kink at 0 is never within a finite-difference step."""
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return backend.asarray(sign * rng.uniform(margin, 2.0, size=shape))


def _distinct(rng, *shape, gap=0.05):
    """Entries at least ``gap`` apart: no max-pooling window has a near tie."""
    values = gap * rng.permutation(math.prod(shape)).reshape(shape)
    return backend.asarray(values - values.mean())


def _linear_params(rng, d_in, d_out):
    return {"W": _normal(rng, TASKS, d_in, d_out), "b": _normal(rng, TASKS, d_out)}


def _conv_params(rng, c_in, c_out):
    return {"W": _normal(rng, TASKS, 3, 3, c_in, c_out) / 3.0, "b": _normal(rng, TASKS, c_out)}


def _bn_params(rng, channels):
    return {"gamma": backend.asarray(1.0 + 0.5 * rng.standard_normal((TASKS, channels))),
            "beta": _normal(rng, TASKS, channels)}


# ---- what is checked (explicit lists: add a layer here when you add one) -------------------

def layer_cases(rng):
    """[(component, layer module, params, x, forward config)], every array with a task axis."""
    B, N = TASKS, SAMPLES
    return [
        ("Linear", layers.linear, _linear_params(rng, 4, 3), _normal(rng, B, N, 4), {}),
        ("ReLU", layers.relu, {}, _away_from_zero(rng, B, N, 5), {}),
        ("Conv2d stride 1", layers.conv2d, _conv_params(rng, 2, 3), _normal(rng, B, N, 5, 5, 2), {"stride": 1}),
        ("Conv2d stride 2", layers.conv2d, _conv_params(rng, 2, 3), _normal(rng, B, N, 5, 5, 2), {"stride": 2}),
        ("Conv2d naive stride 1", layers.conv2d_naive, _conv_params(rng, 2, 3), _normal(rng, B, N, 5, 5, 2),
         {"stride": 1}),
        ("Conv2d naive stride 2", layers.conv2d_naive, _conv_params(rng, 2, 3), _normal(rng, B, N, 5, 5, 2),
         {"stride": 2}),
        ("BatchNorm (images)", layers.batchnorm, _bn_params(rng, 3), _normal(rng, B, N, 4, 4, 3), {}),
        ("BatchNorm (features)", layers.batchnorm, _bn_params(rng, 4), _normal(rng, B, 5, 4), {}),
        ("MaxPool 2x2", layers.maxpool, {}, _distinct(rng, B, N, 5, 4, 2), {}),
        ("MeanPool", layers.meanpool, {}, _normal(rng, B, N, 3, 4, 2), {}),
        ("Flatten", layers.flatten, {}, _normal(rng, B, N, 2, 3, 2), {}),
    ]


def loss_cases(rng):
    """[(component, loss module, prediction, target)] with a task axis."""
    B, N, C = TASKS, 5, 4
    return [
        ("MSE", losses.mse, _normal(rng, B, N, 2), _normal(rng, B, N, 2)),
        ("Softmax cross-entropy", losses.softmax_ce, _normal(rng, B, N, C),
         backend.asarray(rng.integers(0, C, size=(B, N)), dtype=np.int64)),
    ]


def _per_task(params, rng, scale=0.1):
    """TASKS different parameter sets around ``params``, like the adapted φ_i of an inner loop."""
    return {k: backend.asarray(backend.to_numpy(v)[None] + scale * rng.standard_normal((TASKS,) + v.shape))
            for k, v in params.items()}


LAYER_STEP = 1e-5    # finite-difference step of the layer and loss checks (inputs built ≥ 0.05 from kinks)
MODEL_STEP = 1e-6    # ... of the model checks, whose thousands of ReLU inputs are not placed by hand
KINK_MARGIN = 100 * MODEL_STEP   # model check points are redrawn until no ReLU input or max-pool gap is nearer


def kink_margin(model, params, x):
    """How far (params, x) is from the nearest kink of the model: the smallest |input| of
    any ReLU, and the smallest gap between the two largest entries of any max-pool window
    (but a tie of two exact zeros, which ReLU makes, is flat: its gradient is 0 anyway).
    A finite difference with a step much smaller than this never straddles a kink."""
    sample_rank = len(model.input_shape) + 1
    if x.ndim == sample_rank + 1:        # a task axis on x: give shared params one too
        params = {k: a if a.ndim > len(model.param_shapes[k]) else backend.xp.broadcast_to(a, (x.shape[0],) + a.shape)
                  for k, a in params.items()}
    margin, h = math.inf, x
    for layer in model.layers:
        a = backend.to_numpy(h)
        if layer.module is layers.relu:
            margin = min(margin, float(np.abs(a).min()))
        elif layer.module is layers.maxpool:
            H, W = a.shape[-3] // 2 * 2, a.shape[-2] // 2 * 2
            win = a[..., :H, :W, :].reshape(a.shape[:-3] + (H // 2, 2, W // 2, 2, a.shape[-1]))
            win = np.moveaxis(win, (-4, -2), (-2, -1)).reshape(a.shape[:-3] + (H // 2, W // 2, a.shape[-1], 4))
            top2 = np.sort(win, axis=-1)[..., -2:]
            gaps = (top2[..., 1] - top2[..., 0])[(top2[..., 0] != 0) | (top2[..., 1] != 0)]
            if gaps.size:
                margin = min(margin, float(gaps.min()))
        prefix = layer.name + "."
        layer_params = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        h, _ = layer.module.forward(layer_params, h, **layer.config)
    return margin


def _away_from_kinks(draw, rng, tries=200):
    """Call draw(rng) -> (model, params, x, y) until the point is KINK_MARGIN from any kink."""
    for _ in range(tries):
        model, params, x, y = draw(rng)
        if kink_margin(model, params, x) >= KINK_MARGIN:
            return model, params, x, y
    raise RuntimeError(f"no check point {KINK_MARGIN} away from a kink in {tries} draws of {model}")


def _sinusoid_case(rng, shared):
    def draw(rng):
        model = architectures.sinusoid_mlp()
        theta = model.init_params(seed=int(rng.integers(2**31)))
        x = rng.uniform(-5, 5, size=(TASKS, 5, 1))
        y = rng.uniform(0.1, 5, size=(TASKS, 1, 1)) * np.sin(x + rng.uniform(0, np.pi, size=(TASKS, 1, 1)))
        params = theta if shared else _per_task(theta, rng)
        return model, params, backend.asarray(x), backend.asarray(y)
    return _away_from_kinks(draw, rng)


def _omniglot_case(rng, downsample, image_size):
    def draw(rng):
        ways = 3
        model = architectures.omniglot_cnn(ways=ways, channels=4, downsample=downsample, image_size=image_size)
        params = _per_task(model.init_params(seed=int(rng.integers(2**31))), rng)
        n = 2 * ways                                       # 2 images per class in each task
        x = _normal(rng, TASKS, n, *model.input_shape)
        labels = np.stack([rng.permutation(np.arange(n) % ways) for _ in range(TASKS)])
        return model, params, x, backend.asarray(labels, dtype=np.int64)
    return _away_from_kinks(draw, rng)


def model_cases(rng):
    """[(component, (model, params, x, y))]; small models so each gradient entry is cheap.
    (Four 2×2 max-pools need 16×16 images: 16 → 8 → 4 → 2 → 1.)"""
    return [
        ("Sinusoid MLP 1-40-40-1, per-task φ", _sinusoid_case(rng, shared=False)),
        ("Sinusoid MLP 1-40-40-1, shared θ", _sinusoid_case(rng, shared=True)),
        ("Omniglot CNN stride, 4 ch, 8x8, 3-way", _omniglot_case(rng, "stride", image_size=8)),
        ("Omniglot CNN maxpool, 4 ch, 16x16, 3-way", _omniglot_case(rng, "maxpool", image_size=16)),
    ]


# ---- running ------------------------------------------------------------------------------

def collect(seed=0):
    """Run every check in float64; returns [(component, check, rel_error)]."""
    rows = []
    previous = backend.float_dtype()
    backend.set_dtype("float64")
    try:
        rng = np.random.default_rng(seed)
        for name, module, params, x, config in layer_cases(rng):
            errors = gradcheck.check_layer(module, params, x, config=config, seed=seed, h=LAYER_STEP)
            rows += [(name, check, err) for check, err in errors.items()]
        for name, module, pred, target in loss_cases(rng):
            errors = gradcheck.check_loss(module, pred, target, seed=seed, h=LAYER_STEP)
            rows += [(name, check, err) for check, err in errors.items()]
        for name, (model, params, x, y) in model_cases(rng):
            rows.append((name, "gradient", gradcheck.check_model_gradient(model, params, x, y, h=MODEL_STEP)))
            errors = gradcheck.check_model_hvp(model, params, x, y, seed=seed, h=MODEL_STEP)
            rows += [(name, "hvp", errors["hvp"]), (name, "hvp symmetry", errors["symmetry"])]
    finally:
        backend.set_dtype(previous)
    return rows


def format_table(rows, tol):
    width = max(len("component"), *(len(r[0]) for r in rows))
    check_width = max(len("check"), *(len(r[1]) for r in rows))
    lines = [f"{'component':<{width}}  {'check':<{check_width}}  {'rel. error':>10}  result",
             f"{'-' * width}  {'-' * check_width}  {'-' * 10}  ------"]
    for component, check, err in rows:
        verdict = "pass" if err <= tol else "FAIL"           # NaN fails too
        lines.append(f"{component:<{width}}  {check:<{check_width}}  {err:>10.1e}  {verdict}")
    return "\n".join(lines)


def summary(rows, tol):
    worst = max(err if math.isfinite(err) else math.inf for _, _, err in rows)
    failed = [r for r in rows if not r[2] <= tol]
    if failed:
        return f"{len(rows)} checks, {len(failed)} FAILED at tol {tol:g} (max rel. error {worst:.1e})"
    return f"{len(rows)} checks, all passed (max rel. error {worst:.1e})"


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--tol", type=float, default=1e-6,
                        help="largest relative error that passes (default 1e-6; a correct derivative "
                             "is typically ~1e-8, a bug ~1e-2)")


def run(args):
    if args.seed < 0:
        print(f"error: --seed must be an integer ≥ 0, got {args.seed}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.tol) and args.tol > 0):
        print(f"error: --tol must be a positive, finite number (a relative error), got {args.tol:g}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(f"Gradient checks: float64, central differences (step {LAYER_STEP:g} for layers and losses, "
          f"{MODEL_STEP:g} for models), {TASKS} tasks per input, seed {args.seed}, "
          f"pass if rel. error <= {args.tol:g}\n")
    rows = collect(seed=args.seed)
    print(format_table(rows, args.tol))
    print()
    print(summary(rows, args.tol) + f" in {time.perf_counter() - start:.1f} s")
    return 0 if all(err <= args.tol for _, _, err in rows) else 1
