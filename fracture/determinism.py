"""`deterministic=true`: the same command on the same machine gives the same history.csv and predictions.

Seeds alone (keras.utils.set_random_seed, which every run calls) fix the initial weights, the batch
order and the augmentation draws. What is left is the order in which a kernel adds up its
floating-point terms, which some kernels may choose at run time; each backend has a switch that
forbids that:

- TensorFlow: tf.config.experimental.enable_op_determinism() (ops without a deterministic
  implementation then raise instead of running; on a CPU nearly all have one);
- PyTorch: torch.use_deterministic_algorithms(True) (on a CUDA GPU PyTorch also wants
  CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment, which only the user may set);
- JAX: XLA on a CPU already runs the same program the same way; on a GPU it needs
  XLA_FLAGS=--xla_gpu_deterministic_ops=true in the environment before JAX starts (the user's to set).

Same machine only: another CPU (AVX-512 vs AVX2, Intel vs AMD) or another library version lets
oneDNN/XLA pick other kernels, and the numbers differ in their last bits (docs/reproducibility.md).
The switches are process-wide and cannot be turned off again, so they are applied only when asked.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def enable(seed: int) -> str:
    """Seed everything and switch the loaded backend to deterministic kernels; returns the backend."""
    import keras

    keras.utils.set_random_seed(seed)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
    log.info("deterministic mode: seed %d, %s deterministic kernels", seed, backend)
    return backend
