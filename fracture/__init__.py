"""fracture: humerus fracture detection on MURA X-rays with Keras 3.

One import gives the public API (the notebooks need nothing else):

    import fracture as fr
    cfg = fr.load_config(overrides={"epochs": 2})
    run_dir = fr.train(cfg)
    run = fr.load_run(run_dir)

Heavy modules (Keras, and through it TensorFlow/JAX/PyTorch) load on first use, so
`python -m fracture --help` and config errors answer instantly.
"""

import importlib

from fracture import startup
from fracture.config import Config
from fracture.config import load as load_config
from fracture.errors import FractureError

__version__ = "0.1.0"

# Before any module here imports Keras: TensorFlow's C++ start-up banner (absl, oneDNN, CPU
# features) is dropped from its first import in this process, whoever triggers it; real warnings
# and errors still show (fracture/startup.py).
startup.install()

# public name -> module that defines it (imported lazily on first attribute access)
_LAZY = {
    "train": ("fracture.training", "train"),
    "evaluate": ("fracture.evaluation", "evaluate"),
    "generate_synthetic": ("fracture.synth", "generate"),
    "load_boxes": ("fracture.synth", "load_boxes"),
    "load_index": ("fracture.data", "load_index"),
    "index_mura": ("fracture.data", "index_mura"),
    "index_folders": ("fracture.data", "index_folders"),
    "split_by_patient": ("fracture.data", "split_by_patient"),
    "cross_validate": ("fracture.cv", "cross_validate"),
    "describe_data": ("fracture.data", "describe"),
    "load_images": ("fracture.data", "load_images"),
    "read_gray": ("fracture.imageio", "read_gray"),
    "decode_gray": ("fracture.imageio", "decode_gray"),
    "build_model": ("fracture.model", "build_model"),
    "load_run": ("fracture.runs", "load_run"),
    "find_run": ("fracture.runs", "find_run"),
    "count_params": ("fracture.model", "count_params"),
    "unfrozen_layers": ("fracture.model", "unfrozen_layers"),
    "summary_table": ("fracture.evaluation", "summary_table"),
    "predict_paths": ("fracture.evaluation", "predict_paths"),
    "study_level": ("fracture.scores", "study_level"),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fracture' has no attribute {name!r}")


__all__ = ["Config", "FractureError", "load_config", "__version__", *_LAZY]
