"""The two models of the MAML paper, as plain layer sequences (numpy_amaml.model.Model).

sinusoid_mlp:   x (N, 1) -> Linear 1-40 -> ReLU -> Linear 40-40 -> ReLU -> Linear 40-1, MSE.
    Initialisation (PyTorch's nn.Linear default): W, b ~ U(−1/√fan_in, 1/√fan_in).
"""
import numpy as np

from numpy_amaml import layers, losses
from numpy_amaml.model import Layer, Model


def sinusoid_mlp(hidden=(40, 40), in_dim=1, out_dim=1):
    """The regression MLP of MAML's sinusoid experiment (default 1-40-40-1, ReLU, MSE)."""
    sizes = (in_dim,) + tuple(hidden) + (out_dim,)
    seq, shapes = [], {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        seq.append(Layer(f"fc{i}", layers.linear))
        shapes[f"fc{i}.W"], shapes[f"fc{i}.b"] = (fan_in, fan_out), (fan_out,)
        if i < len(sizes) - 1:
            seq.append(Layer(f"relu{i}", layers.relu))

    def init(rng):
        params = {}
        for name, shape in shapes.items():
            fan_in = shapes[name.split(".")[0] + ".W"][0]
            bound = 1.0 / np.sqrt(fan_in)
            params[name] = rng.uniform(-bound, bound, size=shape)
        return params

    return Model(seq, losses.mse, shapes, input_shape=(in_dim,), init=init,
                 description="MLP " + "-".join(map(str, sizes)))
