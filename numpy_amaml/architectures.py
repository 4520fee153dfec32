"""The two models of the MAML paper, as plain layer sequences (numpy_amaml.model.Model).

sinusoid_mlp:   x (N, 1) -> Linear 1-40 -> ReLU -> Linear 40-40 -> ReLU -> Linear 40-1, MSE.
    Initialisation (PyTorch's nn.Linear default): W, b ~ U(−1/√fan_in, 1/√fan_in).

omniglot_cnn:   x (N, 28, 28, 1) -> 4 × [conv 3×3, 64 channels, padding 1 -> batch norm
    (batch statistics) -> ReLU], downsampling by stride-2 convolutions (MAML's Omniglot
    choice; 28 → 14 → 7 → 4 → 2) or by 2×2 max-pools after stride-1 convolutions
    (28 → 14 → 7 → 3 → 1, odd sizes floored as in MAML's 'VALID' pooling) -> mean over
    space -> Linear 64-N (logits), softmax cross-entropy.
    Initialisation: conv W ~ Xavier/Glorot uniform U(−a, a), a = √(6/(fan_in + fan_out))
    with fan_in = 9·C_in, fan_out = 9·C_out (as MAML); conv b = 0; batch norm γ = 1,
    β = 0; head W ~ Xavier uniform (fan_in = channels, fan_out = ways); head b = 0.
    Names: conv1.W, conv1.b, bn1.gamma, bn1.beta, ..., conv4.*, bn4.*, head.W, head.b.
    Differences from MAML's TensorFlow code, for the record: its Omniglot head is drawn
    from N(0, 1); its batch norm learns a shift only (scale=False) with eps = 1e-3 (here γ
    is learned too, eps = 1e-5); its 'SAME' stride-2 convolutions pad even sizes on the
    bottom/right only (here: one pixel on every side; the output sizes are the same).
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


DOWNSAMPLING = ("stride", "maxpool")


def omniglot_cnn(ways=5, channels=64, downsample="stride", image_size=28, in_channels=1, blocks=4):
    """MAML's Omniglot CNN: ``blocks`` × [conv3×3 → batchnorm → ReLU (→ maxpool 2×2)],
    mean over space, Linear(channels → ways), softmax cross-entropy.

    downsample: "stride" (stride-2 convolutions) or "maxpool" (stride-1 convolutions,
    each block followed by a 2×2 max-pool). Input: x (..., N, image_size, image_size,
    in_channels); output: logits (..., N, ways). The conv bias is kept, as in MAML,
    although the batch norm that follows cancels it (its gradient is zero).
    """
    if downsample not in DOWNSAMPLING:
        raise ValueError(f"omniglot_cnn: downsample must be one of {DOWNSAMPLING}, got {downsample!r}")
    for name, value in (("ways", ways), ("channels", channels), ("image_size", image_size),
                        ("in_channels", in_channels), ("blocks", blocks)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"omniglot_cnn: {name} must be a positive integer, got {value!r}")
    stride = 2 if downsample == "stride" else 1
    seq, shapes, sizes = [], {}, [image_size]
    c_in = in_channels
    for k in range(1, blocks + 1):
        seq += [Layer(f"conv{k}", layers.conv2d, {"stride": stride}),
                Layer(f"bn{k}", layers.batchnorm),
                Layer(f"relu{k}", layers.relu)]
        shapes[f"conv{k}.W"], shapes[f"conv{k}.b"] = (3, 3, c_in, channels), (channels,)
        shapes[f"bn{k}.gamma"], shapes[f"bn{k}.beta"] = (channels,), (channels,)
        size = layers.conv2d.output_size(sizes[-1], stride)
        if downsample == "maxpool":
            seq.append(Layer(f"pool{k}", layers.maxpool))
            if size < 2:
                raise ValueError(f"omniglot_cnn: image_size {image_size} is too small for {blocks} "
                                 f"max-pool blocks (spatial sizes {sizes + [size]}; a 2×2 pool needs ≥ 2)")
            size //= 2
        sizes.append(size)
        c_in = channels
    seq += [Layer("meanpool", layers.meanpool), Layer("head", layers.linear)]
    shapes["head.W"], shapes["head.b"] = (channels, ways), (ways,)

    def init(rng):
        params = {}
        for name, shape in shapes.items():
            key = name.split(".")[1]
            if key == "W":
                receptive = shape[0] * shape[1] if len(shape) == 4 else 1
                fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
                bound = np.sqrt(6.0 / (fan_in + fan_out))
                params[name] = rng.uniform(-bound, bound, size=shape)
            elif key == "gamma":
                params[name] = np.ones(shape)
            else:                                   # conv b, beta, head b
                params[name] = np.zeros(shape)
        return params

    spatial = " → ".join(map(str, sizes))
    return Model(seq, losses.softmax_ce, shapes, input_shape=(image_size, image_size, in_channels),
                 init=init, description=f"Omniglot CNN {blocks}×{channels} ({downsample}, {spatial}), "
                                        f"{ways}-way")
