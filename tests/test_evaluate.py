"""Metrics against values computed by hand, and the MURA study-level aggregation."""

import numpy as np
import pandas as pd
import pytest

from fracture.evaluate import binary_metrics, score_frame, study_level


def test_binary_metrics_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    probs = [0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7]
    m = binary_metrics(labels, probs, threshold=0.5)
    # predicted: 1 1 0 0 1 0 0 1 -> tp=3 fn=1 tn=3 fp=1
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(3 / 4)
    # kappa: po = 0.75, pe = 0.5*0.5 + 0.5*0.5 = 0.5 -> (0.75-0.5)/(1-0.5)
    assert m["kappa"] == pytest.approx(0.5)
    # AUC: pairs (pos, neg) ranked correctly: pos 0.9,0.8,0.7 beat all 4 negs (12); 0.3 beats 0.2,0.1 (2) -> 14/16
    assert m["auc"] == pytest.approx(14 / 16)
    assert m["report"]["abnormal"]["recall"] == pytest.approx(0.75)


def test_threshold_is_strictly_above():
    m = binary_metrics([1, 0], [0.5, 0.4], threshold=0.5)
    assert m["confusion_matrix"] == [[1, 0], [1, 0]]  # 0.5 is not above 0.5


def test_single_class_gives_nan_auc_not_a_crash():
    m = binary_metrics([1, 1], [0.9, 0.2])
    assert np.isnan(m["auc"]) and m["sensitivity"] == 0.5


def test_study_probability_is_the_mean_of_its_images():
    frame = pd.DataFrame({
        "study": ["a", "a", "a", "b", "b", "c"],
        "label": [1, 1, 1, 0, 0, 1],
        "probability": [0.9, 0.2, 0.7, 0.6, 0.2, 0.4],
    })
    studies = study_level(frame).set_index("study")
    assert studies.loc["a", "probability"] == pytest.approx(0.6)
    assert studies.loc["b", "probability"] == pytest.approx(0.4)
    assert studies["images"].tolist() == [3, 2, 1]
    scores = score_frame(frame, 0.5)
    assert scores["study"]["n"] == 3 and scores["image"]["n"] == 6
    assert scores["study"]["confusion_matrix"] == [[1, 0], [1, 1]]  # a abnormal, b normal, c missed


def test_mixed_labels_in_a_study_are_an_error():
    frame = pd.DataFrame({"study": ["a", "a"], "label": [1, 0], "probability": [0.5, 0.5]})
    with pytest.raises(ValueError, match="study a"):
        study_level(frame)


def test_predict_images_pads_to_whole_batches_and_cuts_the_padding_off():
    import keras

    from fracture.evaluate import predict_images

    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1, "sigmoid")])
    seen = []
    real_predict = model.predict
    model.predict = lambda x, **kw: (seen.append(len(x)), real_predict(x, **kw))[1]
    images = np.random.default_rng(0).integers(0, 255, (5, 4, 4, 1)).astype(np.uint8)
    got = predict_images(model, images, batch_size=4)
    assert seen == [8] and got.shape == (5,)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model(images.astype(np.float32))).ravel(), rtol=1e-5)
