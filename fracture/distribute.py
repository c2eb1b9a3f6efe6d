"""Training on several devices or machines with the engines Keras already has (docs/cluster.md).

cfg.distribution:
  none           one device (the default)
  mirrored       tf.distribute.MirroredStrategy over the local GPUs (TensorFlow backend)
  multiworker    tf.distribute.MultiWorkerMirroredStrategy, one process per machine, configured by
                 the TF_CONFIG environment variable (TensorFlow backend)
  data_parallel  keras.distribution.DataParallel over all JAX devices; across processes when
                 JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set
                 (jax.distributed.initialize; JAX backend)

In every mode `batch_size` is the global batch: each worker reads its own shard of the training
images (data.make_batches(shard=...)) with batch_size / workers of them per step. Only the chief
(worker 0) writes the run folder and the MLflow run; the other workers write their checkpoints to
a temporary folder, as the TensorFlow multi-worker guide recommends, and resume from the chief's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fracture.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = {"mirrored": "tensorflow", "multiworker": "tensorflow", "data_parallel": "jax"}
JAX_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@dataclass
class Setup:
    """Where this process stands in a distributed run."""

    kind: str = "none"
    worker_index: int = 0  # this process's rank: TF_CONFIG's task index, or jax.process_index()
    num_workers: int = 1  # processes reading their own shard
    num_replicas: int = 1  # devices the global batch is split over
    strategy: object = None  # the tf.distribute strategy (mirrored, multiworker)
    distribution: object = None  # the keras.distribution.Distribution (data_parallel)
    temp_dirs: list = field(default_factory=list)

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.worker_index, self.num_workers

    def worker_batch(self, batch_size: int) -> int:
        """This worker's share of the global batch."""
        return batch_size // self.num_workers

    @contextlib.contextmanager
    def scope(self):
        """Build, compile and fit inside this: variables are placed and steps run on every replica."""
        if self.strategy is not None:
            with self.strategy.scope():
                yield
        elif self.distribution is not None:
            with self.distribution.scope():
                yield
        else:
            yield

    def dataset(self, batches, global_batch: int):
        """What fit reads. multiworker: the worker's own batches as a tf.distribute dataset made per
        worker (no auto-sharding: the shard is already this worker's, and every replica gets
        global_batch / replicas images); otherwise the PyDataset itself (MirroredStrategy splits
        each batch over the local GPUs, DataParallel over the JAX devices)."""
        if self.kind != "multiworker":
            return batches
        import itertools

        import tensorflow as tf

        epochs = itertools.count()

        def generate():
            if next(epochs):  # a new iterator = a new epoch: reshuffle as PyDataset.on_epoch_end does
                batches.on_epoch_end()
            for position in range(len(batches)):
                yield batches[position]

        first = batches[0]
        signature = tuple(tf.TensorSpec((None, *part.shape[1:]), tf.float32) for part in first)
        local = self.num_replicas // self.num_workers  # replicas on this worker

        def per_worker(context):
            dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
            dataset = dataset.unbatch().batch(context.get_per_replica_batch_size(global_batch), drop_remainder=True)
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(batches) * local))
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return dataset.with_options(options).prefetch(2)

        return self.strategy.distribute_datasets_from_function(per_worker)

    def prepare(self, model, batches) -> None:
        """After compile, before fit. Keras 3.15's TensorFlow fit builds the metrics from a first batch
        that it averages with strategy.reduce, which MultiWorkerMirroredStrategy cannot do for a
        (images, labels, weights) tuple (ValueError: PerReplica to Tensor). Build from a local batch
        here instead and skip that step on this model object only."""
        if self.kind != "multiworker":
            return
        with self.strategy.scope():
            model._symbolic_build(data_batch=batches[0])
        model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
        # Its train and test functions reduce the logs with strategy.reduce("MEAN", v, axis=0) under
        # this strategy ("auto", hard-wired: distribute_reduction_method is not read), which fails on
        # scalars: "Invalid reduction dimension 0 for input with 0 dimensions" (tensorflow/tensorflow
        # #72388). Each log as a 1-vector makes that the mean over the workers. Every worker
        # validates on the whole val set (val_shard), so val_auc, which picks the best model and
        # stops early, is the same on all.
        model.train_step = _logs_as_vectors(model.train_step)
        model.test_step = _logs_as_vectors(model.test_step)

    @property
    def val_shard(self) -> tuple[int, int]:
        """multiworker: every worker scores all of val (see prepare); otherwise its own shard."""
        return (0, 1) if self.kind == "multiworker" else self.shard

    def work_dir(self, run_dir: Path) -> Path:
        """The chief writes run_dir; any other worker a temporary folder that starts from a copy of
        the chief's newest commit (shared file system), so every worker resumes at the same epoch."""
        if self.is_chief:
            return run_dir
        from fracture import resume  # here, not at the top: it loads Keras, which this module does not

        folder = Path(tempfile.mkdtemp(prefix=f"fracture-worker{self.worker_index}-")) / run_dir.name
        self.temp_dirs.append(folder.parent)
        newest = resume.commits(run_dir)[:1]
        if newest:
            backup = folder / resume.BACKUP
            shutil.copytree(newest[0], backup / newest[0].name)
            best = resume.read_state(newest[0]).get("best_model")
            if best and (run_dir / resume.BACKUP / best).is_file():
                shutil.copy2(run_dir / resume.BACKUP / best, backup / best)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def close(self) -> None:
        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def _logs_as_vectors(step):
    """step with each of its scalar logs reshaped to shape (1,) (see Setup.prepare)."""
    import tensorflow as tf

    def vector_step(data):
        return {name: tf.reshape(value, (1,)) for name, value in step(data).items()}

    return vector_step


def check(cfg, backend: str) -> None:
    """A distribution that this backend or environment cannot run is a ConfigError with the fix."""
    kind = cfg.distribution
    if kind == "none":
        return
    if BACKENDS[kind] != backend:
        raise ConfigError(f"distribution={kind} runs on the {BACKENDS[kind]} backend, not {backend}: set "
                          f"KERAS_BACKEND={BACKENDS[kind]} or pick "
                          f"{'data_parallel' if backend == 'jax' else 'mirrored or multiworker'}")
    if kind == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("distribution=multiworker needs TF_CONFIG (the cluster and this worker's index) in the "
                              "environment of every worker; see docs/cluster.md")
        if not cfg.run_name:
            raise ConfigError("distribution=multiworker needs a run_name (the same on every worker): a timestamped "
                              "name could differ between machines")
    if kind == "data_parallel":
        present = [name for name in JAX_ENV if os.environ.get(name)]
        if present and len(present) != len(JAX_ENV):
            raise ConfigError(f"multi-process data_parallel needs all of {', '.join(JAX_ENV)}; only "
                              f"{', '.join(present)} set")


def tf_config_task() -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG; the chief task counts as worker 0."""
    config = json.loads(os.environ["TF_CONFIG"])
    cluster, task = config.get("cluster", {}), config.get("task", {})
    chiefs = len(cluster.get("chief", []))
    total = chiefs + len(cluster.get("worker", []))
    index = 0 if task.get("type") == "chief" else chiefs + int(task.get("index", 0))
    return index, max(total, 1)


def setup(cfg) -> Setup:
    """Create the strategy or distribution for cfg.distribution. Call it before any other
    TensorFlow operation runs (MultiWorkerMirroredStrategy configures collectives at start-up)."""
    import keras

    check(cfg, keras.config.backend())
    kind = cfg.distribution
    if kind == "none":
        return Setup()
    if kind in ("mirrored", "multiworker"):
        import tensorflow as tf

        if kind == "mirrored":
            strategy = tf.distribute.MirroredStrategy()
            out = Setup(kind, strategy=strategy, num_replicas=strategy.num_replicas_in_sync)
        else:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            index, workers = tf_config_task()
            out = Setup(kind, worker_index=index, num_workers=workers, strategy=strategy,
                        num_replicas=strategy.num_replicas_in_sync)
    else:
        import jax

        if all(os.environ.get(name) for name in JAX_ENV) and not jax.distributed.is_initialized():
            jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                                       int(os.environ["JAX_PROCESS_ID"]))
        devices = keras.distribution.list_devices()
        out = Setup(kind, worker_index=jax.process_index(), num_workers=jax.process_count(),
                    distribution=keras.distribution.DataParallel(devices=devices), num_replicas=len(devices))
    if cfg.batch_size % out.num_replicas:
        raise ConfigError(f"batch_size={cfg.batch_size} does not divide over {out.num_replicas} devices: use a "
                          f"multiple of {out.num_replicas} (it is the global batch)")
    log.info("distribution %s: %d device(s), worker %d of %d%s", kind, out.num_replicas, out.worker_index,
             out.num_workers, " (chief)" if out.is_chief else "")
    return out
