"""Losses. Each module has:

    forward(pred, target)   -> (loss, cache)   loss has shape ``...`` (one value per task)
    backward(cache)         -> dpred           gradient of Σ_tasks loss
    r_backward(Rpred, cache) -> R{dpred}        the R-op: (∂²loss/∂pred²) Rpred

Because tasks do not interact, the gradient of the summed loss with respect to a
task's predictions is that task's own gradient.
"""
from numpy_amaml.losses import mse, softmax_ce  # noqa: F401
