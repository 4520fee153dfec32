"""A model is a plain sequence of layers over a flat params dict, plus a loss.

Params are named ``"<layer>.<key>"`` (e.g. ``"fc1.W"``). Each array may carry a
leading task axis (B, ...): then x has one too, and the B tasks run as one batched
computation with no interaction. With shared params and a batched x, the
params are broadcast (a view, no copy) and the gradient is summed over tasks.

Everything here is built from the layers' four functions and the loss's three:
    loss_and_grad:  forward sweep, then backward sweep
    hvp:            forward sweep, backward sweep, then r_forward and r_backward sweeps
                    (Pearlmutter's R-operator: exact H v, never forming H)
    loss_grad_sweep + hvp_of_sweep:  the same, with the forward and backward sweeps
                    kept from a gradient computed earlier at the same point
The first layer's input is data: its gradient is never formed where the layer offers
``param_grads`` / ``r_param_grads`` (backward / r_backward without dx; conv2d, linear).
With a task axis, each sweep may run as several slices of that axis on CPU
threads at once (numpy_amaml.parallel; ``set_threads``), with the same results.
"""
import math
from dataclasses import dataclass, field

from numpy_amaml.backend import asarray, float_dtype, xp
from numpy_amaml.validation import check_float_array, check_params
from numpy_amaml.parallel import over_tasks
from numpy_amaml.params import broadcast_to_tasks


@dataclass(frozen=True)
class Layer:
    name: str              # prefix of its params: "fc1" owns "fc1.W" and "fc1.b"
    module: object         # a module of numpy_amaml.layers
    config: dict = field(default_factory=dict)   # keyword arguments of forward (e.g. stride)


class Model:
    """layers: sequence of Layer; loss: a module of numpy_amaml.losses;
    param_shapes: {name: shape without task axis}; input_shape: one sample's shape;
    init: function(rng) -> {name: numpy array} (documented by the builder)."""

    def __init__(self, layers, loss, param_shapes, input_shape, init, description=""):
        self.layers = tuple(layers)
        self.loss_module = loss
        self.param_shapes = {k: tuple(v) for k, v in param_shapes.items()}
        self.input_shape = tuple(input_shape)
        self._init = init
        self.description = description
        self._largest_activation = None
        self._keys = {layer.name: [(name, name[len(layer.name) + 1:]) for name in self.param_shapes
                                   if name.startswith(layer.name + ".")] for layer in self.layers}

    def __repr__(self):
        return f"Model({self.description or [l.name for l in self.layers]})"

    # ---- parameters -------------------------------------------------------------
    def init_params(self, seed=0, dtype=None):
        """Fresh parameters from the builder's documented initialisation, seeded."""
        import numpy as np     # host-side random draws; the arrays then move to the backend
        raw = self._init(np.random.default_rng(seed))
        return {k: asarray(raw[k], dtype) for k in self.param_shapes}

    def largest_activation(self):
        """The size (number of entries) of the largest layer output for one sample: from
        one forward pass of a zero sample at zero params, made on the first call."""
        if self._largest_activation is None:
            x = xp.zeros((1,) + self.input_shape, dtype=float_dtype())
            params = {k: xp.zeros(shape, dtype=float_dtype()) for k, shape in self.param_shapes.items()}
            out, inputs, _ = self._forward(params, x)
            self._largest_activation = max(h.size for h in inputs[1:] + [out])
        return self._largest_activation

    def num_params(self):
        """Number of scalar parameters (without a task axis)."""
        return sum(math.prod(s) for s in self.param_shapes.values())

    def _layer_params(self, params, layer):
        """One layer's params by their own keys: {"W": params["fc1.W"], "b": params["fc1.b"]}
        (the pairs of names, (full name, key), listed once in __init__)."""
        return {key: params[name] for name, key in self._keys[layer.name]}

    # ---- input checks -----------------------------------------------------------
    def _prepare(self, params, x, v=None):
        """Validate; return (params, v, shared). With shared θ and a batched x, params
        and v come back broadcast to (B, ...) views and ``shared`` is True."""
        B = check_params(params, self.param_shapes)
        rank = len(self.input_shape) + 1
        check_float_array(x, "x", ndim=(rank, rank + 1))
        if tuple(x.shape[-len(self.input_shape):]) != self.input_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; each sample must have shape {self.input_shape}")
        if 0 in x.shape[:x.ndim - len(self.input_shape)]:
            raise ValueError(f"x has shape {tuple(x.shape)}: no samples (or no tasks); a loss needs at least one")
        x_B = x.shape[0] if x.ndim == rank + 1 else None
        if v is not None:
            Bv = check_params(v, self.param_shapes, name="v")
            if Bv != B:
                raise ValueError(f"v has task axis {Bv} but params have task axis {B}")
        if B is not None and x_B != B:
            raise ValueError(f"params have a task axis of {B} but x has shape {tuple(x.shape)}")
        shared = B is None and x_B is not None
        if shared:   # broadcast θ over the task axis (views, no copies)
            params = broadcast_to_tasks(params, x_B)
            if v is not None:
                v = broadcast_to_tasks(v, x_B)
        return params, v, shared

    def _finish(self, grads, shared):
        """Put the backward sweep's dict back in layer order; sum over tasks if θ was shared."""
        return {k: grads[k].sum(axis=0) if shared else grads[k] for k in self.param_shapes}

    # ---- sweeps -----------------------------------------------------------------
    def _forward(self, params, x):
        """Returns (output, inputs of each layer, caches of each layer)."""
        h, inputs, caches = x, [], []
        for layer in self.layers:
            inputs.append(h)
            h, cache = layer.module.forward(self._layer_params(params, layer), h, **layer.config)
            caches.append(cache)
        return h, inputs, caches

    def _run(self, sweep, params, x, *rest):
        """sweep(params, x, *rest); with a task axis on x, split over CPU threads
        (numpy_amaml.parallel: the tasks are independent, the results identical)."""
        if x.ndim == len(self.input_shape) + 2:
            return over_tasks(sweep, x.shape[0], params, x, *rest)
        return sweep(params, x, *rest)

    def predict(self, params, x):
        """Model output for x: (..., N, *input_shape) -> (..., N, out)."""
        params, _, _ = self._prepare(params, x)
        return self._run(self._predict, params, x)

    def loss(self, params, x, y):
        """Loss per task: shape () or (B,)."""
        params, _, _ = self._prepare(params, x)
        return self._run(self._loss, params, x, y)

    def loss_and_grad(self, params, x, y):
        """(loss, grads): loss per task (shape () or (B,)); grads like params."""
        params, _, shared = self._prepare(params, x)
        loss, grads = self._run(self._loss_and_grad, params, x, y)
        return loss, self._finish(grads, shared)

    def loss_grad_hvp(self, params, x, y, v):
        """(loss, grads, Hv): the loss, its gradient, and the exact Hessian-vector
        product H v of the loss at params, all from one pass of each sweep."""
        params, v, shared = self._prepare(params, x, v)
        loss, grads, hv = self._run(self._loss_grad_hvp, params, x, y, v)
        return loss, self._finish(grads, shared), self._finish(hv, shared)

    # ---- the sweeps, on validated params (with the task axis of x, if any) --------
    def _predict(self, params, x):
        return self._forward(params, x)[0]

    def _loss(self, params, x, y):
        return self.loss_module.forward(self._forward(params, x)[0], y)[0]

    def _backward(self, dh, caches):
        """The backward sweep from dh = ∂L/∂output. Returns (grads, out_grads) with
        out_grads[i] = ∂L/∂(output of layer i), the dy that layer i's backward received.
        The first layer's input is the data, whose gradient nobody needs: a layer that
        offers ``param_grads`` (backward without dx) is asked for that alone there."""
        grads, out_grads = {}, [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            layer, cache = self.layers[i], caches[i]
            out_grads[i] = dh
            if i == 0 and hasattr(layer.module, "param_grads"):
                dh, dp = None, layer.module.param_grads(dh, cache)
            else:
                dh, dp = layer.module.backward(dh, cache)
            grads.update({f"{layer.name}.{k}": g for k, g in dp.items()})
        return grads, out_grads

    def _r_sweeps(self, sweep, v):
        """H v from a finished forward and backward sweep: the r_forward sweep, then the
        r_backward sweep (R{dy} of each layer from its dy in sweep.out_grads)."""
        Rh, rcaches = None, []          # Rx = None: the data does not depend on params
        for layer, h, cache in zip(self.layers, sweep.inputs, sweep.caches):
            Rh, rcache = layer.module.r_forward(self._layer_params(sweep.params, layer), h,
                                                self._layer_params(v, layer), Rh, cache)
            rcaches.append(rcache)
        Rdh = self.loss_module.r_backward(Rh, sweep.loss_cache)
        hv = {}
        for i in reversed(range(len(self.layers))):
            layer, cache, rcache, dh = self.layers[i], sweep.caches[i], rcaches[i], sweep.out_grads[i]
            if i == 0 and hasattr(layer.module, "r_param_grads"):    # R{dx} of the data: unused
                Rdh, Rdp = None, layer.module.r_param_grads(dh, Rdh, cache, rcache)
            else:
                Rdh, Rdp = layer.module.r_backward(dh, Rdh, cache, rcache)
            hv.update({f"{layer.name}.{k}": g for k, g in Rdp.items()})
        return hv

    def _loss_grad_sweep(self, params, x, y):
        out, inputs, caches = self._forward(params, x)
        loss, loss_cache = self.loss_module.forward(out, y)
        grads, out_grads = self._backward(self.loss_module.backward(loss_cache), caches)
        return loss, grads, Sweep(params, inputs, caches, loss_cache, out_grads)

    def _loss_and_grad(self, params, x, y):
        loss, grads, _ = self._loss_grad_sweep(params, x, y)
        return loss, grads

    def _loss_grad_hvp(self, params, x, y, v):
        loss, grads, sweep = self._loss_grad_sweep(params, x, y)
        return loss, grads, self._r_sweeps(sweep, v)

    def hvp(self, params, x, y, v):
        """Exact Hessian-vector product H v of the loss at params (dict like params)."""
        return self.loss_grad_hvp(params, x, y, v)[2]

    # ---- a kept sweep: several HVPs at one point -----------------------------------
    def loss_grad_sweep(self, params, x, y):
        """(loss, grads, sweep): ``loss_and_grad``, plus what its two sweeps leave behind
        (every layer's input, cache and output gradient), so that ``hvp_of_sweep`` can
        give H v at the same params, x, y by the R-sweeps alone: the forward and
        backward sweeps that ``hvp`` would repeat are skipped (MAML's inner step at φ_k
        is exactly that forward and backward sweep). The sweep is one object, so this
        call is never split over threads (call it on each slice instead); it holds the
        activations until it is dropped."""
        params, _, shared = self._prepare(params, x)
        loss, grads, sweep = self._loss_grad_sweep(params, x, y)
        sweep.shared = shared
        return loss, self._finish(grads, shared), sweep

    def hvp_of_sweep(self, sweep, v):
        """H v at the point of a ``loss_grad_sweep`` (equal to ``hvp`` there)."""
        B = check_params(v, self.param_shapes, name="v")
        x_B = sweep.inputs[0].shape[0] if sweep.inputs[0].ndim == len(self.input_shape) + 2 else None
        if sweep.shared and B is None:
            v = broadcast_to_tasks(v, x_B)
        elif B != x_B:
            raise ValueError(f"v has task axis {B} but the sweep's params have task axis {x_B}")
        return self._finish(self._r_sweeps(sweep, v), sweep.shared)


@dataclass
class Sweep:
    """What a forward and a backward sweep at (params, x, y) leave behind."""
    params: dict           # the validated params (with the task axis of x, if any)
    inputs: list           # inputs[i]: the input of layer i (inputs[0] = x)
    caches: list           # caches[i]: layer i's forward cache
    loss_cache: object     # the loss's forward cache
    out_grads: list        # out_grads[i] = ∂L/∂(output of layer i): dy of layer i's backward
    shared: bool = False   # params were one θ broadcast over the tasks (sum H v over them)
