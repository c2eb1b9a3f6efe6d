"""The demo's stopping rule: once validation AUC reaches a target, a few more epochs at a lower rate, then stop."""
import keras
import numpy as np
import pytest

from fracture import config
from fracture.errors import ConfigError
from fracture.training import make_callbacks, stop_at_target


def test_stops_after_the_first_epoch_at_the_target():
    # A real fit whose "val_auc" is scripted per epoch: training must end after epoch 3 (0.96).
    scripted = [0.5, 0.8, 0.96, 0.99, 1.0]

    class Script(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = scripted[epoch]

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[Script(), stop_at_target("val_auc", 0.95)])
    assert len(history.history["loss"]) == 3


def scripted_fit(values, callback, rates=None):
    """Fit a tiny model whose val_auc is scripted per epoch; returns the epochs run. `rates`
    collects the optimizer's learning rate at the start of every epoch."""
    class Script(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if rates is not None:
                rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = values[epoch]

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    return len(model.fit(x, y, epochs=len(values), verbose=0, callbacks=[Script(), callback]).history["loss"])


def test_trains_on_after_the_target_at_a_lower_rate():
    # First crossing at epoch 2 (a swing: 0.90 follows); two more epochs at a tenth of the rate.
    values = [0.5, 0.96, 0.90, 0.97, 0.98, 0.99, 1.0]
    rates = []
    assert scripted_fit(values, stop_at_target("val_auc", 0.95, extra_epochs=2, lr_factor=0.1), rates) == 4
    assert rates == pytest.approx([0.01, 0.01, 0.001, 0.001])
    rates = []
    assert scripted_fit(values, stop_at_target("val_auc", 0.95), rates) == 2  # no extra epochs: the old rule
    assert rates == pytest.approx([0.01, 0.01])
    assert scripted_fit([0.5] * 5, stop_at_target("val_auc", 0.95, extra_epochs=2, lr_factor=0.1)) == 5


def test_the_count_survives_a_resume():
    # A run killed one epoch after its crossing resumes with wait=2 restored by the commit (RunBackup
    # sets the attribute) and its lowered rate in the optimizer state: one more epoch, no new cut.
    callback = stop_at_target("val_auc", 0.95, extra_epochs=2, lr_factor=0.1)
    callback.wait = 2
    rates = []
    assert scripted_fit([0.97, 0.99, 1.0], callback, rates) == 1 and rates == pytest.approx([0.01])


def test_make_callbacks_adds_it_only_when_set(tmp_path):
    names = lambda cfg: [type(cb).__name__ for cb in make_callbacks(cfg, tmp_path)]  # noqa: E731
    assert "StopAtTarget" not in names(config.load(overrides={"mlflow": False}))
    assert "StopAtTarget" in names(config.load(overrides={"mlflow": False, "stop_at_val_auc": 0.97}))
    with pytest.raises(ConfigError, match="stop_at_val_auc"):
        config.load(overrides={"stop_at_val_auc": 1.5})
    for key, bad in [("epochs_after_target", -1), ("lr_after_target", 0), ("lr_after_target", 1.5)]:
        with pytest.raises(ConfigError, match=key):
            config.load(overrides={key: bad})


def test_the_commit_stores_the_count(tmp_path):
    from fracture import resume

    cfg = config.load(overrides={"mlflow": False, "stop_at_val_auc": 0.97, "epochs_after_target": 2})
    callbacks = make_callbacks(cfg, tmp_path)
    backup, target = callbacks[-1], next(cb for cb in callbacks if type(cb).__name__ == "StopAtTarget")
    assert target in backup.stateful and "wait" in resume.CALLBACK_STATE
