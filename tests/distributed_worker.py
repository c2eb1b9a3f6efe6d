"""One worker of the distributed-training tests (tests/test_distribute.py): trains with the
key=value overrides on its command line and saves the weights it ended with to OUT (.npz).

The weights come from the model object fit trained, caught where train compiles it, so each
worker's own result is compared (the non-chief's checkpoints go to a temporary folder)."""

import json
import logging
import sys

import numpy as np

import fracture as fr
from fracture import training


def main(out, overrides):
    import keras
    keras.config.disable_traceback_filtering()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    fitted = []
    real_compile = training.compile_model

    def compile_and_keep(model, cfg):
        fitted.append(model)
        return real_compile(model, cfg)

    training.compile_model = compile_and_keep
    run_dir = fr.train(fr.load_config(overrides=overrides))
    (model,) = fitted
    np.savez(out, *[np.asarray(w, np.float32) for w in model.get_weights()])
    history = getattr(model, "history", None)
    losses = history.history.get("loss", []) if history is not None else []
    with open(out + ".json", "w") as f:
        json.dump({"run_dir": str(run_dir), "loss": [float(v) for v in losses]}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
