"""Activations and gradients on the TensorFlow, JAX and PyTorch backends, behind `CamEngine`.

Gradients with respect to an inner layer: `keras.Model([model.input, layer.output], logit)` turns
the activation into an input while skip paths (DenseNet's concatenations) still come from the
image; `keras.Model(model.input, layer.output)` gives the activation itself.
`_backend_functions` holds the only backend-specific code.

Lifetime of the compiled functions: a `CamEngine(model)` owns them. It builds a layer's two
sub-models and its traced/jitted step on first use and keeps them as long as the engine lives,
so the web app pays each compile once. `engine_for(model)` is the one module global: a weak
registry with one engine per live model, which the functions of `fracture.cam` share; an entry
goes when its model is garbage-collected or on `release_engine(model)`.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from fracture.cam.checks import as_batch, spatial_layer
from fracture.errors import FractureError

CHUNK = 32  # images per compiled forward call (one shape, so JAX compiles once)
GRADIENT_CHUNK = 16  # images per gradient call: bounds the memory a backward pass holds


def _backend_functions(activation_model, head):
    """(activations, gradients) for this backend, both taking float32 images (B, H, W, 1):
    activations(x) -> A, and gradients(x, sign) -> (A, dScore/dA, logits), as NumPy.

    Score = sign * sum over the batch of the logits: every image's logit depends on its own
    activations only (inference mode), so one backward pass gives every image's gradient.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Traced once per layer, for any batch size; later calls skip Python.
        signature = [tf.TensorSpec(activation_model.inputs[0].shape, tf.float32), tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=signature)
        def gradients(x, sign):
            a = activation_model(x, training=False)
            with tf.GradientTape() as tape:
                tape.watch(a)
                logit = head([x, a], training=False)
                score = sign * tf.reduce_sum(logit)
            return a, tape.gradient(score, a), logit

        def activations(x):  # eager: one forward costs less than tracing one
            return activation_model(x, training=False)

    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def values(m):  # read at every call, so the maps follow weights that change
            return [v.value for v in m.trainable_variables], [v.value for v in m.non_trainable_variables]

        def score(a, x, sign, head_vars):
            logit, _ = head.stateless_call(*head_vars, [x, a], training=False)
            return sign * jnp.sum(logit), logit

        # Jitted over stateless_call: eager jax.grad through DenseNet121 took minutes.
        @jax.jit
        def grad_step(act_vars, head_vars, x, sign):
            a, _ = activation_model.stateless_call(*act_vars, x, training=False)
            (_, logit), grads = jax.value_and_grad(score, has_aux=True)(a, x, sign, head_vars)
            return a, grads, logit

        forward = jax.jit(lambda act_vars, x: activation_model.stateless_call(*act_vars, x, training=False)[0])

        def gradients(x, sign):
            return grad_step(values(activation_model), values(head), x, np.float32(sign))

        def activations(x):
            return forward(values(activation_model), x)

    elif backend == "torch":
        import torch

        def gradients(x, sign):
            x = keras.ops.convert_to_tensor(x)
            with torch.no_grad():
                a = activation_model(x, training=False)
            a = a.detach().requires_grad_(True)
            logit = head([x, a], training=False)
            (grads,) = torch.autograd.grad(sign * logit.sum(), a)
            return a.detach(), grads, logit.detach()

        def activations(x):
            with torch.no_grad():
                return activation_model(keras.ops.convert_to_tensor(x), training=False)

    else:
        raise FractureError(f"CAMs support the tensorflow, jax and torch backends, not '{backend}'")

    def numpy(t):
        return np.asarray(keras.ops.convert_to_numpy(t), np.float32)

    return (lambda x: numpy(activations(np.asarray(x, np.float32))),
            lambda x, sign: tuple(numpy(t) for t in gradients(np.asarray(x, np.float32), float(sign))))


def _input_gradient_function(logit_model):
    """gradients(x, sign) -> (d(sign * logit)/dx (B, H, W, 1), logits (B, 1)) as NumPy, for
    float32 raw-pixel images: the input-space methods' one backend-specific step."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        signature = [tf.TensorSpec(logit_model.inputs[0].shape, tf.float32), tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=signature)
        def gradients(x, sign):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logit = logit_model(x, training=False)
                score = sign * tf.reduce_sum(logit)
            return tape.gradient(score, x), logit

    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(x, sign, variables):
            logit, _ = logit_model.stateless_call(*variables, x, training=False)
            return sign * jnp.sum(logit), logit

        step = jax.jit(jax.value_and_grad(score, has_aux=True))

        def gradients(x, sign):
            variables = ([v.value for v in logit_model.trainable_variables],
                         [v.value for v in logit_model.non_trainable_variables])
            (_, logit), grads = step(x, np.float32(sign), variables)
            return grads, logit

    elif backend == "torch":
        import torch

        def gradients(x, sign):
            x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
            logit = logit_model(x, training=False)
            (grads,) = torch.autograd.grad(sign * logit.sum(), x)
            return grads, logit.detach()

    else:
        raise FractureError(f"CAMs support the tensorflow, jax and torch backends, not '{backend}'")

    def numpy(t):
        return np.asarray(keras.ops.convert_to_numpy(t), np.float32)

    return lambda x, sign: tuple(numpy(t) for t in gradients(np.asarray(x, np.float32), float(sign)))


def chunked(fn, x, chunk=CHUNK):
    """fn over x in chunks; when x needs several chunks the last is padded so every call has the
    same shape (one JAX compilation, one TensorFlow trace). fn may return a tuple of per-image
    arrays; each is then concatenated on its own. x may be a tuple of arrays of one length
    (several model inputs): fn then gets a tuple of their chunks."""
    several = isinstance(x, tuple)
    arrays = x if several else (x,)
    total = len(arrays[0])
    out = []
    for start in range(0, total, chunk):
        parts = [a[start:start + chunk] for a in arrays]
        n = len(parts[0])
        if n < chunk and total > chunk:
            parts = [np.concatenate([p, np.repeat(p[-1:], chunk - n, axis=0)]) for p in parts]
        result = fn(tuple(parts) if several else parts[0])
        out.append([np.asarray(r, np.float32)[:n] for r in (result if isinstance(result, tuple) else (result,))])
    joined = tuple(np.concatenate(column) for column in zip(*out))
    return joined if isinstance(result, tuple) else joined[0]


def logit_tensor(model):
    """The pre-sigmoid output: our models name it `logit`; else the input of a final sigmoid."""
    names = {layer.name for layer in model.layers}
    if "logit" in names:
        return model.get_layer("logit").output
    last = model.layers[-1]
    if getattr(last, "activation", None) is not None and getattr(last.activation, "__name__", "") == "sigmoid":
        if hasattr(last, "kernel"):
            raise FractureError(f"model {model.name}: the logit is inside Dense layer '{last.name}'; "
                                "build it as Dense(1) named 'logit' followed by a sigmoid Activation")
        return last.input
    raise FractureError(f"model {model.name} has no layer named 'logit' (the pre-sigmoid output)")


class LayerPlumbing:
    """For one (model, layer): the activation model, the head (image, activation) -> logit, and
    their compiled functions."""

    def __init__(self, model, layer):
        import keras

        self.layer_name = layer.name
        self.activation_model = keras.Model(model.inputs[0], layer.output)
        self.head = keras.Model([model.inputs[0], layer.output], logit_tensor(model))
        self._activations, self._gradients = _backend_functions(self.activation_model, self.head)

    def activations(self, x) -> np.ndarray:
        """The layer's activations (B, h, w, C) of float32 images, in compiled-size chunks."""
        return chunked(self._activations, x)

    def gradients(self, x, sign) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One backward pass over the whole batch x: (activations, d(sign * logit)/d(activations),
        logits (B, 1)). Unchunked: the caller bounds the batch (it holds every activation)."""
        return self._gradients(x, sign)

    def head_logits(self, x, a) -> np.ndarray:
        """Logits (B,) of the head given images and (possibly edited) activations of this layer:
        Ablation-CAM's forward passes. The images still feed the skip paths around the layer."""
        return chunked(lambda parts: self.head.predict_on_batch(list(parts)),
                       (np.asarray(x, np.float32), np.asarray(a, np.float32))).reshape(-1)


class CamEngine:
    """The CAM plumbing of one model: a `LayerPlumbing` per layer and the logit model, each built
    on first use and cached on this object for its lifetime. Thread-safe (the web app serves from
    several threads)."""

    def __init__(self, model):
        # Weak: the registry below is keyed weakly by the model, and a strong reference from its
        # value would keep the model, and every compiled function, alive for ever.
        self._model = weakref.ref(model)
        self._layers: dict[str, LayerPlumbing] = {}
        self._logit_model = None
        self._input_gradients = None
        self._lock = threading.Lock()

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise FractureError("the model of this CamEngine no longer exists")
        return model

    def layer(self, name) -> LayerPlumbing:
        """The plumbing of layer `name` (checked: it must output a (B, h, w, C) map)."""
        model = self.model
        layer = spatial_layer(model, name)
        with self._lock:
            if layer.name not in self._layers:
                self._layers[layer.name] = LayerPlumbing(model, layer)
            return self._layers[layer.name]

    def logits(self, images) -> np.ndarray:
        """Logits (B,) of raw-pixel images, inference mode (augmentation off)."""
        logit_model = self._logits_model()
        return chunked(logit_model.predict_on_batch, as_batch(self.model, images)).reshape(-1)

    def _logits_model(self):
        import keras

        model = self.model
        with self._lock:
            if self._logit_model is None:
                self._logit_model = keras.Model(model.inputs[0], logit_tensor(model))
            return self._logit_model

    def input_gradients(self, images, sign) -> tuple[np.ndarray, np.ndarray]:
        """(d(sign * logit)/d(pixels) (B, H, W, 1), logits (B,)) of raw-pixel images, in chunks
        of GRADIENT_CHUNK (a backward pass holds the whole network's activations of its batch)."""
        x = as_batch(self.model, images)
        logit_model = self._logits_model()
        with self._lock:
            if self._input_gradients is None:
                self._input_gradients = _input_gradient_function(logit_model)
            step = self._input_gradients
        grads, logits = chunked(lambda part: step(part, sign), x, GRADIENT_CHUNK)
        return grads, logits.reshape(-1)

    @property
    def cached_layers(self) -> list[str]:
        return list(self._layers)


_ENGINES = weakref.WeakKeyDictionary()  # model -> CamEngine: the one global (module docstring)
_ENGINES_LOCK = threading.Lock()


def engine_for(model) -> CamEngine:
    """The shared engine of `model`, created on first use."""
    with _ENGINES_LOCK:
        if model not in _ENGINES:
            _ENGINES[model] = CamEngine(model)
        return _ENGINES[model]


def release_engine(model) -> None:
    """Drop the shared engine of `model` and its compiled functions (a no-op when it has none)."""
    with _ENGINES_LOCK:
        _ENGINES.pop(model, None)


def predict_logits(model, images) -> np.ndarray:
    """Logits (B,) of raw-pixel images, inference mode (augmentation off)."""
    return engine_for(model).logits(images)
