"""The demo's stopping rule: stop after the first epoch whose validation AUC reaches a target."""
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


def test_make_callbacks_adds_it_only_when_set(tmp_path):
    names = lambda cfg: [type(cb).__name__ for cb in make_callbacks(cfg, tmp_path)]  # noqa: E731
    assert "StopAtTarget" not in names(config.load(overrides={"mlflow": False}))
    assert "StopAtTarget" in names(config.load(overrides={"mlflow": False, "stop_at_val_auc": 0.97}))
    with pytest.raises(ConfigError, match="stop_at_val_auc"):
        config.load(overrides={"stop_at_val_auc": 1.5})
