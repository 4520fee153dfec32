"""The configuration of a training run: one dataclass, its defaults, and its validation.

``TrainConfig`` holds every setting of a run; ``None`` in a field means "the task's default"
(``TASK_DEFAULTS``; the hypergradient rates: ``default_hyper_lrs``) or, for the
Omniglot-only fields of a sinusoid run, "does not apply". ``resolve_config(options)`` fills
in the defaults and validates; ``config_from_dict`` does the same for a stored config.json.
Every choice list (tasks, methods, optimizers, hyper-rate rules, dtypes, downsampling) is in
``CHOICES``: the train and sweep commands build their options from it, and the validation
checks against it.
"""
import math
import os
from dataclasses import dataclass, fields

from numpy_amaml.architectures import DOWNSAMPLING
from numpy_amaml.backend import DTYPES
from numpy_amaml.omniglot import DRAWINGS_PER_CHARACTER
from numpy_amaml.optim import HYPER_RULES, OPTIMIZERS

TASKS = ("sinusoid", "omniglot")
METHODS = ("maml", "alpha-maml", "meta-sgd", "lslr")
METHOD_LABELS = {"maml": "MAML", "alpha-maml": "Alpha MAML", "meta-sgd": "Meta-SGD", "lslr": "LSLR"}
# How each method sets α (docs/method.md §13): fixed; by its hypergradient, online; learned by the
# meta-optimizer with θ, one α per parameter (Meta-SGD) or per tensor and inner step (LSLR, MAML++).
METHOD_HELP = {"maml": "α and β fixed", "alpha-maml": "α and β moved online by their hypergradients",
               "meta-sgd": "one α per parameter, learned with θ by the meta-optimizer (β fixed)",
               "lslr": "one α per tensor and inner step (MAML++), learned with θ by the meta-optimizer (β fixed)"}
CHOICES = {"task": TASKS, "method": METHODS, "optimizer": tuple(OPTIMIZERS), "hyper_rule": HYPER_RULES,
           "dtype": tuple(DTYPES), "downsample": DOWNSAMPLING}


@dataclass
class TrainConfig:
    """Everything that defines a training run (docs/method.md gives the symbols)."""
    task: str = "sinusoid"             # "sinusoid" | "omniglot"
    method: str = "alpha-maml"         # "maml" (fixed α, β) | "alpha-maml" (hypergradient α, β) |
                                       # "meta-sgd", "lslr" (α learned with θ, β fixed): METHOD_HELP
    first_order: bool = False          # drop the Hessian terms of the reverse pass (FOMAML)
    inner_steps: int = 1               # K, inner gradient steps during meta-training
    alpha: float = None                # α₀, initial inner learning rate
    beta: float = 0.001                # β₀, initial meta learning rate
    optimizer: str = "adam"            # meta-optimizer: "adam" | "sgd"
    hyper_rule: str = "normalized"     # how h_α, h_β move α, β: "normalized" | "additive" (the paper's);
                                       # docs/method.md §10, docs/sensitivity.md for the evidence
    alpha_hyper_lr: float = None       # γ_α (0 for MAML)
    beta_hyper_lr: float = None        # γ_β (0 for MAML)
    per_layer_alpha: bool = False      # one α per parameter tensor instead of one scalar (maml, alpha-maml)
    meta_batch: int = None             # B, tasks per meta-iteration
    iterations: int = None             # meta-iterations in total
    seed: int = 0                      # model initialisation and task sampling
    dtype: str = None                  # "float32" | "float64" (default: NUMPY_AMAML_DTYPE, else float32)
    log_every: int = 10                # metrics.jsonl line every n iterations (and the first/last)
    checkpoint_every: int = 1000       # checkpoint every n iterations (and the last)
    curvature_every: int = 0           # log λ_max of the support loss every n iterations (0: never)
    shots: int = None                  # support examples per task (per class for Omniglot)
    queries: int = None                # query examples per task (per class for Omniglot)
    # Omniglot only
    ways: int = None                   # N classes per task
    test_inner_steps: int = None       # inner steps at validation / test time
    downsample: str = None             # "stride" (MAML) | "maxpool"
    channels: int = None               # channels of each conv block
    data_dir: str = None               # folder with the two Omniglot zips (None: loader's search)
    val_every: int = None              # validation accuracy every n iterations
    val_tasks: int = None              # validation tasks per evaluation


# MAML's settings (Finn et al. 2017): sinusoid §5.1; Omniglot 5-way 1-shot from the paper's
# code (60k iterations, meta-batch 32, α = 0.4, 1 step in training and 3 at test). Omniglot
# queries: MAML's code draws 1 query image per class; 5 per class gives a less noisy
# meta-gradient for little extra compute (the support pass dominates at 1 shot).
TASK_DEFAULTS = {
    "sinusoid": dict(alpha=0.01, meta_batch=25, iterations=70000, shots=10, queries=10),
    "omniglot": dict(alpha=0.4, meta_batch=32, iterations=60000, shots=1, queries=5,
                     ways=5, test_inner_steps=3, downsample="stride", channels=64,
                     val_every=500, val_tasks=100),
}
OMNIGLOT_ONLY = ("ways", "test_inner_steps", "downsample", "channels", "data_dir", "val_every", "val_tasks")

# (γ_α, γ_β) of --method alpha-maml with the additive rule (the paper's, α ← α − γ_α h_α). A
# hypergradient's scale depends on
# the task and on the meta-optimizer: with Adam, h_β = −⟨g_t, u_{t−1}⟩ and u has entries of
# order 1, so h_β is of the order of ‖g‖₁ and γ_β must be tiny; with SGD, h_β = −⟨g_t, g_{t−1}⟩ ~ ‖g‖².
# Sinusoid (measured, 5k-20k iterations): with Adam, γ_β = 1e-7 keeps β stable (≈ 0.0012 from
# 4k to 20k iterations) while γ_β ≥ 3e-7 makes it decay towards its floor, which freezes θ;
# γ_α = 1e-5 moves α smoothly, 1e-4 so noisily that it hits its floor now and then. From poor
# initial rates (α = 0.001 or 0.1, or β = 1e-4) these rates rescue runs that MAML loses.
# With SGD, γ_β = 3e-6 raises β steadily, 1e-5 sometimes drops it to the floor.
# Omniglot: scaled to give about the same relative change per iteration as on the sinusoid,
# from the hypergradients of its first iterations (Adam: h_α ≈ 0.05 for α = 0.4, against
# ≈ 15 for α = 0.01; h_β ≈ −17 against ≈ −2); not yet validated by full runs.
ADDITIVE_HYPER_LR_DEFAULTS = {
    ("sinusoid", "adam"): (1e-5, 1e-7),
    ("sinusoid", "sgd"): (1e-5, 3e-6),
    ("omniglot", "adam"): (1e-3, 1e-8),
    ("omniglot", "sgd"): (1e-3, 3e-6),
}
# (γ_α, γ_β) with the normalized rule (α ← α·exp(γ_α cos_α), docs/hyper_rules.md): γ is the
# largest relative change of a rate per iteration, the same for every task and optimizer.
# Chosen by 1-D sinusoid sweeps (4000 iterations, 2 seeds, 3 starts, Adam and SGD;
# docs/hyper_rules.md "Choosing the defaults"): every start converged with both optimizers for
# γ_α in 0.02–0.1 and only for γ_β = 0.02 (0.003 too slow; 0.05–0.1 make β noisy with SGD);
# γ_α = 0.05 brings α down from 0.1 within ~2000 iterations, where 0.02 needs all 4000.
NORMALIZED_HYPER_LR_DEFAULTS = (0.05, 0.02)


def default_hyper_lrs(rule, task, optimizer):
    """(γ_α, γ_β) of --method alpha-maml when not given."""
    if rule == "normalized":
        return NORMALIZED_HYPER_LR_DEFAULTS
    return ADDITIVE_HYPER_LR_DEFAULTS.get((task, optimizer), (0.0, 0.0))

# Settings that may change when a run is resumed: they do not affect θ, α or β.
RESUMABLE = ("iterations", "log_every", "checkpoint_every", "curvature_every", "data_dir", "val_every",
             "val_tasks")

# MAML's split proportions of Omniglot's 1623 characters (1100 meta-train, 100 validation,
# 423 meta-test), as fractions so a smaller dataset is split alike. The split's seed is
# fixed, so runs with different --seed are evaluated on the same meta-test characters.
OMNIGLOT_SPLIT = dict(n_train=1100 / 1623, n_val=100 / 1623, seed=0)

_INTS = ("inner_steps", "meta_batch", "iterations", "log_every", "checkpoint_every", "shots", "queries",
         "ways", "test_inner_steps", "channels", "val_every", "val_tasks")


class ConfigError(ValueError):
    """A bad option or option combination, or a run folder that cannot be used."""


def flag(name):
    """The command-line flag of a TrainConfig field: alpha_hyper_lr -> --alpha-hyper-lr."""
    return "--" + name.replace("_", "-")


def default_dtype():
    """The dtype a run uses when --dtype is not given: NUMPY_AMAML_DTYPE, else float32."""
    value = os.environ.get("NUMPY_AMAML_DTYPE", "float32").lower()
    if value not in DTYPES:
        raise ConfigError(f"NUMPY_AMAML_DTYPE must be one of {tuple(DTYPES)}, got {value!r}")
    return value


def resolve_config(options):
    """A complete, validated TrainConfig from the options given (a dict; absent or None = default)."""
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown settings {unknown}")
    task = options.get("task", TrainConfig.task)
    method = options.get("method", TrainConfig.method)
    for name, value in (("task", task), ("method", method)):
        if value not in CHOICES[name]:
            raise ConfigError(f"{flag(name)} must be one of {CHOICES[name]}, got {value!r}")
    if task == "sinusoid":
        given = [name for name in OMNIGLOT_ONLY if name in options]
        if given:
            raise ConfigError(f"{', '.join(flag(n) for n in given)} only apply to --task omniglot")
    if method != "alpha-maml":
        for name in ("alpha_hyper_lr", "beta_hyper_lr"):
            if options.get(name, 0.0) != 0.0:
                raise ConfigError(f"{flag(name)} needs --method alpha-maml ({METHOD_LABELS[method]}: "
                                  f"{METHOD_HELP[method]})")
        if method != "maml" and options.get("per_layer_alpha"):
            raise ConfigError(f"--per-layer-alpha is for maml and alpha-maml; {method} has its own "
                              f"layout of α ({METHOD_HELP[method]})")
        rates = (0.0, 0.0)
    else:
        rates = default_hyper_lrs(options.get("hyper_rule", TrainConfig.hyper_rule), task,
                                  options.get("optimizer", TrainConfig.optimizer))
    defaults = dict(TASK_DEFAULTS[task], alpha_hyper_lr=rates[0], beta_hyper_lr=rates[1])
    if "dtype" not in options:
        defaults["dtype"] = default_dtype()
    config = TrainConfig(**{**defaults, **options})
    validate_config(config)
    return config


def config_from_dict(stored, source):
    """The TrainConfig of a stored config.json (a dict), validated; ``source`` names it in errors."""
    if not isinstance(stored, dict):
        raise ConfigError(f"{source} must hold a JSON object, got {type(stored).__name__}")
    names = {f.name for f in fields(TrainConfig)}
    unknown, missing = sorted(set(stored) - names), sorted(names - set(stored))
    if unknown or missing:
        raise ConfigError(f"{source} does not match this version's settings: unknown {unknown}, missing {missing}")
    config = TrainConfig(**stored)
    try:
        validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def validate_config(config):
    """Raise ConfigError naming the option when a value has the wrong type or is out of range."""
    omniglot = config.task == "omniglot"
    for name, allowed in CHOICES.items():
        if name == "downsample" and not omniglot:
            continue
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{flag(name)} must be one of {allowed}, got {getattr(config, name)!r}")
    for name in ("first_order", "per_layer_alpha"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{flag(name)} must be true or false, got {getattr(config, name)!r}")
    for name in _INTS:
        value = getattr(config, name)
        if name in OMNIGLOT_ONLY and not omniglot:
            if value is not None:
                raise ConfigError(f"{flag(name)} only applies to --task omniglot")
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{flag(name)} must be a positive integer, got {value!r}")
    if not isinstance(config.curvature_every, int) or isinstance(config.curvature_every, bool) \
            or config.curvature_every < 0:
        raise ConfigError(f"--curvature-every must be an integer ≥ 0, got {config.curvature_every!r}")
    if not isinstance(config.seed, int) or isinstance(config.seed, bool) or config.seed < 0:
        raise ConfigError(f"--seed must be an integer ≥ 0, got {config.seed!r}")
    for name, low in (("alpha", 0.0), ("beta", 0.0), ("alpha_hyper_lr", None), ("beta_hyper_lr", None)):
        value = getattr(config, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (value <= 0.0 if low is not None else value < 0.0):
            raise ConfigError(f"{flag(name)} must be a {'positive' if low is not None else '≥ 0'} "
                              f"number, got {value!r}")
    if config.data_dir is not None and not isinstance(config.data_dir, str):
        raise ConfigError(f"--data-dir must be a folder name, got {config.data_dir!r}")
    if omniglot:
        if config.ways < 2:
            raise ConfigError(f"--ways must be ≥ 2 (a 1-way task has nothing to classify), got {config.ways}")
        if config.shots + config.queries > DRAWINGS_PER_CHARACTER:
            raise ConfigError(f"--shots {config.shots} + --queries {config.queries} exceeds the "
                              f"{DRAWINGS_PER_CHARACTER} drawings of an Omniglot character")
