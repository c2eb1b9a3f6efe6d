"""Metrics against values computed by hand, and the MURA study-level aggregation."""

import numpy as np
import pandas as pd
import pytest

from fracture.evaluation import binary_metrics, score_frame
from fracture.scores import study_level


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

    from fracture.evaluation import predict_images

    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1, "sigmoid")])
    seen = []
    real_predict = model.predict
    # what predict is handed: batches, each read on its own (a memmap cache is never copied whole)
    model.predict = lambda x, **kw: (seen.extend(x[i][0].shape[0] for i in range(len(x))), real_predict(x, **kw))[1]
    images = np.random.default_rng(0).integers(0, 255, (5, 4, 4, 1)).astype(np.uint8)
    got = predict_images(model, images, batch_size=4)
    assert seen == [4, 4] and got.shape == (5,)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model(images.astype(np.float32))).ravel(), rtol=1e-5)


def test_image_and_study_scores_of_a_small_table_by_hand():
    """score_frame on a fixed predictions table against numbers worked out by hand (threshold 0.5).
    Study b is abnormal by its max (0.7) but normal by its mean (0.4): the aggregation shows."""
    rows = [  # study, label, probability; studies interleaved so the grouping has work to do
        ("b", 1, 0.2), ("a", 1, 0.9), ("d", 0, 0.1), ("b", 1, 0.3), ("c", 0, 0.6),
        ("a", 1, 0.5), ("e", 1, 0.8), ("d", 0, 0.3), ("b", 1, 0.7),
    ]
    frame = pd.DataFrame(rows, columns=["study", "label", "probability"])
    scores = score_frame(frame, 0.5)

    # Image level: positives 0.2 0.9 0.3 0.5 0.8 0.7 -> above 0.5: 0.9 0.8 0.7 (0.5 is not above) -> tp=3 fn=3;
    # negatives 0.1 0.6 0.3 -> fp=1 (0.6) tn=2.
    image = scores["image"]
    assert image["n"] == 9 and image["confusion_matrix"] == [[2, 1], [3, 3]]
    assert image["accuracy"] == pytest.approx(5 / 9)
    assert image["sensitivity"] == pytest.approx(3 / 6) and image["specificity"] == pytest.approx(2 / 3)
    # kappa: po = 5/9; 6/9 labelled and 4/9 predicted positive -> pe = 6/9*4/9 + 3/9*5/9 = 13/27
    # -> (15/27 - 13/27) / (14/27) = 1/7
    assert image["kappa"] == pytest.approx(1 / 7)
    # AUC over the 6x3 pairs: 0.9 0.8 0.7 beat all 3 (9); 0.5 beats 0.1 0.3 (2); 0.2 beats 0.1 (1);
    # 0.3 beats 0.1 and ties 0.3 (1.5) -> 13.5 / 18
    assert image["auc"] == pytest.approx(13.5 / 18)

    # Study level, the mean of each study's images: a (0.9+0.5)/2 = 0.7, b (0.2+0.3+0.7)/3 = 0.4,
    # c 0.6, d (0.1+0.3)/2 = 0.2, e 0.8. Labels a b e abnormal, c d normal.
    # predicted: a 1 (tp), b 0 (fn), c 1 (fp), d 0 (tn), e 1 (tp)
    study = scores["study"]
    assert study["n"] == 5 and study["confusion_matrix"] == [[1, 1], [1, 2]]
    assert study["accuracy"] == pytest.approx(3 / 5)
    assert study["sensitivity"] == pytest.approx(2 / 3) and study["specificity"] == pytest.approx(1 / 2)
    # kappa: po = 3/5; 3/5 labelled and 3/5 predicted positive -> pe = 9/25 + 4/25 = 13/25 -> 0.08/0.48
    assert study["kappa"] == pytest.approx(1 / 6)
    # AUC over the 3x2 pairs: 0.7 beats 0.6 0.2 (2); 0.8 (2); 0.4 beats 0.2 (1) -> 5/6
    assert study["auc"] == pytest.approx(5 / 6)
