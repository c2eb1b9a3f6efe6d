"""Backbone weights files of our own, in the layout of Keras's ImageNet no-top files.

`save_notop_weights(model, path)` takes the backbone layers out of a trained fracture model and
writes them the way `keras.applications` ships its ImageNet weights (the legacy HDF5 layout,
`densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5` for DenseNet121). Such a file is then
used exactly as the ImageNet one: `weights=/path/to/that.h5`, or dropped into ~/.keras/models/
under the ImageNet name. benchmarks/transfer.py uses this to exercise the fine-tuning recipe
offline: pretrain on one synthetic set, fine-tune on another.
"""

from __future__ import annotations

from pathlib import Path

from fracture.fileio import atomic_path


def standalone_backbone(backbone: str, image_size: int):
    """keras.applications.<backbone> without its top, random weights, for `image_size` RGB input."""
    import keras

    return getattr(keras.applications, backbone)(include_top=False, weights=None,
                                                 input_shape=(image_size, image_size, 3))


def save_notop_weights(model, backbone: str, path) -> Path:
    """The backbone part of a fracture `model` as a no-top weights file at `path` (written atomically).

    The flat fracture model holds the backbone's layers under their keras.applications names, so
    each layer of a fresh standalone backbone takes the arrays of its namesake."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format  # the layout keras.applications loads

    reference = standalone_backbone(backbone, model.input_shape[1])
    ours = {layer.name: layer for layer in model.layers}
    for layer in reference.layers:
        if layer.weights:
            layer.set_weights(ours[layer.name].get_weights())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    return path
