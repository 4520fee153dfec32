"""A model is a plain sequence of layers over a flat params dict, plus a loss.

Params are named ``"<layer>.<key>"`` (e.g. ``"fc1.W"``). Each array may carry a
leading task axis (B, ...): then x has one too, and the B tasks run as one batched
computation with no interaction. With shared params and a batched x, the
params are broadcast (a view, no copy) and the gradient is summed over tasks.

Everything here is built from the layers' four functions and the loss's three:
    loss_and_grad:  forward sweep, then backward sweep
    hvp:            forward + r_forward sweep, then backward + r_backward sweep
                    (Pearlmutter's R-operator: exact H v, never forming H)
With a task axis, each sweep may run as several slices of that axis on CPU
threads at once (numpy_amaml.parallel; ``set_threads``), with the same results.
"""
import math
from dataclasses import dataclass, field

from numpy_amaml.backend import asarray, xp
from numpy_amaml.checks import check_float_array, check_params
from numpy_amaml.parallel import over_tasks


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

    def __repr__(self):
        return f"Model({self.description or [l.name for l in self.layers]})"

    # ---- parameters -------------------------------------------------------------
    def init_params(self, seed=0, dtype=None):
        """Fresh parameters from the builder's documented initialisation, seeded."""
        import numpy as np     # host-side random draws; the arrays then move to the backend
        raw = self._init(np.random.default_rng(seed))
        return {k: asarray(raw[k], dtype) for k in self.param_shapes}

    def num_params(self):
        """Number of scalar parameters (without a task axis)."""
        return sum(math.prod(s) for s in self.param_shapes.values())

    def _layer_params(self, params, layer):
        prefix = layer.name + "."
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}

    # ---- input checks -----------------------------------------------------------
    def _prepare(self, params, x, v=None):
        """Validate; return (params, v, shared). With shared θ and a batched x, params
        and v come back broadcast to (B, ...) views and ``shared`` is True."""
        B = check_params(params, self.param_shapes)
        rank = len(self.input_shape) + 1
        check_float_array(x, "x", ndim=(rank, rank + 1))
        if tuple(x.shape[-len(self.input_shape):]) != self.input_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; each sample must have shape {self.input_shape}")
        x_B = x.shape[0] if x.ndim == rank + 1 else None
        if v is not None:
            Bv = check_params(v, self.param_shapes, name="v")
            if Bv != B:
                raise ValueError(f"v has task axis {Bv} but params have task axis {B}")
        if B is not None and x_B != B:
            raise ValueError(f"params have a task axis of {B} but x has shape {tuple(x.shape)}")
        shared = B is None and x_B is not None
        if shared:   # broadcast θ over the task axis (views, no copies)
            params = {k: xp.broadcast_to(a, (x_B,) + a.shape) for k, a in params.items()}
            if v is not None:
                v = {k: xp.broadcast_to(a, (x_B,) + a.shape) for k, a in v.items()}
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

    def _loss_and_grad(self, params, x, y):
        out, _, caches = self._forward(params, x)
        loss, loss_cache = self.loss_module.forward(out, y)
        dh = self.loss_module.backward(loss_cache)
        grads = {}
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            dh, dp = layer.module.backward(dh, cache)
            grads.update({f"{layer.name}.{k}": g for k, g in dp.items()})
        return loss, grads

    def _loss_grad_hvp(self, params, x, y, v):
        out, inputs, caches = self._forward(params, x)
        Rh, rcaches = None, []          # Rx = None: the data does not depend on params
        for layer, h, cache in zip(self.layers, inputs, caches):
            Rh, rcache = layer.module.r_forward(self._layer_params(params, layer), h,
                                                self._layer_params(v, layer), Rh, cache)
            rcaches.append(rcache)
        loss, loss_cache = self.loss_module.forward(out, y)
        dh = self.loss_module.backward(loss_cache)
        Rdh = self.loss_module.r_backward(Rh, loss_cache)
        grads, hv = {}, {}
        for layer, cache, rcache in zip(reversed(self.layers), reversed(caches), reversed(rcaches)):
            dh_in, dp = layer.module.backward(dh, cache)
            Rdh, Rdp = layer.module.r_backward(dh, Rdh, cache, rcache)
            dh = dh_in
            grads.update({f"{layer.name}.{k}": g for k, g in dp.items()})
            hv.update({f"{layer.name}.{k}": g for k, g in Rdp.items()})
        return loss, grads, hv

    def hvp(self, params, x, y, v):
        """Exact Hessian-vector product H v of the loss at params (dict like params)."""
        return self.loss_grad_hvp(params, x, y, v)[2]
