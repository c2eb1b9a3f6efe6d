"""The demo's stopping rule: stop once validation AUC has reached a target on N epochs in a row."""
import keras
import numpy as np
import pytest

from fracture import config
from fracture.errors import ConfigError
from fracture.train import make_callbacks, stop_at_target


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


def scripted_fit(values, callback, epochs=None):
    class Script(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = values[epoch]

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    return len(model.fit(x, y, epochs=epochs or len(values), verbose=0, callbacks=[Script(), callback]).history["loss"])


def test_confirm_needs_consecutive_epochs_at_the_target():
    # 0.96 at epoch 2 is a swing (0.90 follows); the target then holds on epochs 4 and 5.
    values = [0.5, 0.96, 0.90, 0.97, 0.98, 0.99, 1.0]
    assert scripted_fit(values, stop_at_target("val_auc", 0.95, confirm=2)) == 5
    assert scripted_fit(values, stop_at_target("val_auc", 0.95, confirm=1)) == 2
    assert scripted_fit([0.96, 0.5] * 3, stop_at_target("val_auc", 0.95, confirm=2)) == 6  # never twice in a row


def test_the_count_survives_a_resume():
    # A run killed after epoch 4 (one epoch at the target) resumes with wait=1 restored by the
    # commit (RunBackup sets the attribute): the next epoch at the target stops it.
    callback = stop_at_target("val_auc", 0.95, confirm=2)
    callback.wait = 1
    assert scripted_fit([0.97, 0.99, 1.0], callback) == 1


def test_make_callbacks_adds_it_only_when_set(tmp_path):
    names = lambda cfg: [type(cb).__name__ for cb in make_callbacks(cfg, tmp_path)]  # noqa: E731
    assert "StopAtTarget" not in names(config.load(overrides={"mlflow": False}))
    assert "StopAtTarget" in names(config.load(overrides={"mlflow": False, "stop_at_val_auc": 0.97}))
    with pytest.raises(ConfigError, match="stop_at_val_auc"):
        config.load(overrides={"stop_at_val_auc": 1.5})
    with pytest.raises(ConfigError, match="stop_confirm"):
        config.load(overrides={"stop_confirm": 0})


def test_the_commit_stores_the_count(tmp_path):
    from fracture import resume

    cfg = config.load(overrides={"mlflow": False, "stop_at_val_auc": 0.97, "stop_confirm": 2})
    callbacks = make_callbacks(cfg, tmp_path)
    backup, target = callbacks[-1], next(cb for cb in callbacks if type(cb).__name__ == "StopAtTarget")
    assert target in backup.stateful and "wait" in resume.CALLBACK_STATE
