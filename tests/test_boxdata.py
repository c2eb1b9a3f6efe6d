"""Box-annotated datasets (data_format=coco, yolo): labels, boxes, splits and groups, read back
from files laid out as FracAtlas and a Roboflow YOLO export ship them. The references are
independent: the synthetic generator's own fracture_boxes.csv and MURA labels, and hand-written
annotation files whose boxes are worked out here by hand."""

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

import fracture as fr
from fracture import boxdata, data
from fracture.errors import DataError
from fracture.synth_formats import generate_format

SYNTH = dict(patients=14, seed=5, max_size=96, min_size=64)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same synthetic set as a MURA tree: {image file name as the writers flatten it: (label, box)}."""
    root = fr.generate_synthetic(tmp_path_factory.mktemp("mura"), **SYNTH)
    boxes = {Path(p).resolve(): (x0, y0, x1, y1) for p, x0, y0, x1, y1 in
             fr.load_boxes(root)[["path", "x0", "y0", "x1", "y1"]].itertuples(index=False)}
    frame = data.index_mura(root, "all")
    out = {}
    for path, label, patient in zip(frame["path"], frame["label"], frame["patient"]):
        p = Path(path)
        out[f"{patient}_{p.parent.name.split('_')[0]}_{p.name}"] = (label, boxes.get(p.resolve()))
    return out


@pytest.fixture(scope="module", params=["coco", "yolo"])
def written(request, tmp_path_factory):
    fmt = request.param
    return fmt, generate_format(tmp_path_factory.mktemp(fmt) / "set", fmt, **SYNTH)


def test_synthetic_layouts_read_back_the_generator_labels_and_boxes(written, reference, tmp_path):
    fmt, root = written
    cfg = fr.load_config(overrides=dict(data_format=fmt, data_dir=str(root)))
    frame = data.load_index(cfg)
    assert len(frame) == len(reference)
    assert {Path(p).name: int(v) for p, v in zip(frame["path"], frame["label"])} == \
        {name: label for name, (label, _) in reference.items()}
    from fracture.cam.metrics import boxes_by_path

    boxes = {Path(p).name: b for p, b in boxes_by_path(cfg).items()}
    assert boxes == {name: [box] for name, (label, box) in reference.items() if label}
    assert set(frame["split"]) == {"train", "val", "test"}


def test_coco_splits_by_the_group_column_yolo_by_image_with_a_warning(written, caplog):
    fmt, root = written
    cfg = fr.load_config(overrides=dict(data_format=fmt, data_dir=str(root)))
    with caplog.at_level(logging.WARNING):
        frame = data.load_index(cfg)
    patient_of = {Path(p).name: Path(p).name.split("_")[0] for p in frame["path"]}  # from the file name
    splits_of = {}
    for path, split in zip(frame["path"], frame["split"]):
        splits_of.setdefault(patient_of[Path(path).name], set()).add(split)
    if fmt == "coco":  # dataset.csv's patient_id: no patient on two sides
        assert all(len(s) == 1 for s in splits_of.values())
        assert "no patient ids" not in caplog.text
    else:  # the export's own folders; no ids, so leakage is possible and said
        assert "no patient ids" in caplog.text and "leakage" in caplog.text
        on_disk = {p.name: p.parent.parent.name for p in Path(root).glob("*/images/*.png")}
        assert {Path(p).name: s for p, s in zip(frame["path"], frame["split"])} == \
            {n: {"train": "train", "valid": "val", "test": "test"}[s] for n, s in on_disk.items()}


def _image(path: Path, h=50, w=80):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8))


def test_fracatlas_layout_by_hand(tmp_path, caplog):
    """FracAtlas: the JSON holds fractured images only, dataset.csv lists them all; a 'hardware'
    box is not a fracture; the split files list only the fractured images, so they are not used."""
    root = tmp_path / "FracAtlas"
    for name in ("a.jpg", "b.jpg"):
        _image(root / "images" / "Fractured" / name)
    for name in ("c.jpg", "d.jpg", "e.jpg"):
        _image(root / "images" / "Non_fractured" / name)
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "width": 80, "height": 50},
                       {"id": 8, "file_name": "b.jpg", "width": 80, "height": 50},
                       {"id": 9, "file_name": "c.jpg", "width": 80, "height": 50}],
            "categories": [{"id": 1, "name": "fractured"}, {"id": 2, "name": "hardware"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10.4, 5.0, 20.2, 9.5]},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [60, 30, 40, 40]},
                            {"id": 3, "image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5]},
                            {"id": 4, "image_id": 9, "category_id": 2, "bbox": [1, 1, 3, 3]}]}
    (root / "Annotations" / "COCO JSON").mkdir(parents=True)
    (root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").write_text(json.dumps(coco))
    (root / "dataset.csv").write_text("image_id,hand,leg,hip,shoulder,mixed,fractured\n"
                                      "a.jpg,0,0,0,1,0,1\nb.jpg,1,1,0,0,0,1\nc.jpg,0,0,1,0,0,0\n"
                                      "d.jpg,0,0,0,1,0,0\ne.jpg,0,0,0,0,1,0\n")
    (root / "utilities" / "Fracture Split").mkdir(parents=True)
    (root / "utilities" / "Fracture Split" / "train.csv").write_text("image_id\na.jpg\n")
    (root / "utilities" / "Fracture Split" / "test.csv").write_text("image_id\nb.jpg\n")
    with caplog.at_level(logging.WARNING):
        frame, boxes = boxdata.index_coco(root)
    by_name = frame.assign(name=frame["path"].map(lambda p: Path(p).name)).set_index("name")
    assert by_name["label"].to_dict() == {"a.jpg": 1, "b.jpg": 1, "c.jpg": 0, "d.jpg": 0, "e.jpg": 0}
    assert by_name["study_type"].to_dict() == {"a.jpg": "shoulder", "b.jpg": "mixed", "c.jpg": "hip",
                                               "d.jpg": "shoulder", "e.jpg": "mixed"}
    assert (frame["split"] == "").all() and "list 2 of the 5 images" in caplog.text
    named = {Path(p).name: b for p, b in boxes.items()}
    # [x, y, w, h] -> pixels covering it: 10.4 -> 10, 10.4 + 20.2 = 30.6 -> 31; the second box is clipped
    assert named == {"a.jpg": [(10, 5, 31, 15), (60, 30, 80, 50)], "b.jpg": [(0, 0, 5, 5)]}
    assert "no patient ids" in caplog.text
    with pytest.raises(DataError, match="hardwar.*classes: fractured, hardware"):
        boxdata.index_coco(root, ["hardwar"])
    frame, _ = boxdata.index_coco(root, ["Hardware"])  # case-insensitive; now c is the abnormal one
    assert frame.loc[frame["label"] == 1, "path"].map(lambda p: Path(p).name).tolist() == ["c.jpg"]


def test_roboflow_yolo_layout_by_hand(tmp_path):
    root = tmp_path / "bone"
    (root).mkdir()
    (root / "data.yaml").write_text("nc: 3\nnames: ['elbow positive', 'humerus fracture', 'humerus']\n")
    for split in ("train", "valid", "test"):
        for name in ("x", "y"):
            _image(root / split / "images" / f"{split}_{name}.jpg")
    labels = {"train/labels/train_x.txt": "1 0.5 0.5 0.25 0.2\n2 0.5 0.5 1 1\n",  # a fracture + the bone
              "train/labels/train_y.txt": "2 0.5 0.5 1 1\n",  # only the bone: normal
              "valid/labels/valid_x.txt": "0 0.1 0.1 0.1 0.1\n",  # elbow positive: not by default
              "test/labels/test_x.txt": "1 0.1 0.2 0.5 0.2 0.3 0.6\n"}  # a polygon
    for rel, text in labels.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    frame, boxes = boxdata.index_yolo(root)
    labelled = {Path(p).name: (v, s) for p, v, s in zip(frame["path"], frame["label"], frame["split"])}
    assert labelled == {"train_x.jpg": (1, "train"), "train_y.jpg": (0, "train"), "valid_x.jpg": (0, "val"),
                        "valid_y.jpg": (0, "val"), "test_x.jpg": (1, "test"), "test_y.jpg": (0, "test")}
    # 80 x 50 image: centre (40, 25), size (20, 10); polygon x 0.1..0.5 -> 8..40, y 0.2..0.6 -> 10..30
    assert {Path(p).name: b for p, b in boxes.items()} == {"train_x.jpg": [(30, 20, 50, 30)],
                                                          "test_x.jpg": [(8, 10, 40, 30)]}
    frame, _ = boxdata.index_yolo(root, ["elbow positive", "humerus fracture"])
    assert frame["label"].sum() == 3


def test_no_fracture_class_is_a_clear_error(tmp_path):
    root = tmp_path / "set"
    _image(root / "train" / "images" / "a.jpg")
    (root / "data.yaml").write_text("names: ['elbow positive', 'wrist positive']\n")
    with pytest.raises(DataError, match="no class name contains 'fracture'.*fracture_classes="):
        boxdata.index_yolo(root)


def test_multi_box_pointing_game_and_energy():
    from fracture.cam.metrics import energy_in_box, pointing_game

    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 8, 8] = 1.0  # peak inside the second box of image 0
    maps[1, 0, 9], maps[1, 5, 5] = 3.0, 1.0  # peak outside both boxes of image 1, a quarter inside
    boxes = [[(0, 0, 2, 2), (7, 7, 10, 10)], [(4, 4, 6, 6), (5, 5, 7, 7)]]
    assert pointing_game(maps, boxes).tolist() == [1.0, 0.0]
    assert energy_in_box(maps, boxes).tolist() == [1.0, 0.25]  # overlapping boxes count once


def test_cam_evaluate_scores_against_coco_boxes(trained_run, written, tmp_path):
    """The run's model, pointed at a COCO set: its positive test images are scored against their
    boxes; a random per-pixel map hits a box as often as the boxes cover the image."""
    fmt, root = written
    from fracture.cam.metrics import evaluate_localization
    from fracture.runs import Run, load_run

    run = load_run(trained_run)
    cfg = fr.load_config(overrides=dict(run.config.to_dict(), data_format=fmt, data_dir=str(root)))
    table = evaluate_localization(Run(tmp_path, run.model, cfg, {}), ["gradcam"], ["relu"], steps=4)
    frame = data.load_index(cfg)
    test_positives = frame[(frame["split"] == "test") & (frame["label"] == 1)]
    assert table["n_images"].iloc[0] == len(test_positives)
    from fracture.cam.metrics import boxes_by_path, scale_box

    size, shares = run.model.input_shape[1], []
    for p in test_positives["path"]:
        h, w = cv2.imread(p, cv2.IMREAD_GRAYSCALE).shape
        x0, y0, x1, y1 = scale_box(boxes_by_path(cfg)[str(Path(p).resolve())][0], (h, w), size)
        shares.append((x1 - x0) * (y1 - y0) / size**2)
    random_row = table[table["method"] == "random_pixel"].iloc[0]
    assert random_row["pointing_game"] == pytest.approx(np.mean(shares), abs=0.06)
    assert random_row["energy_in_box"] == pytest.approx(np.mean(shares), abs=0.03)


def test_web_app_shows_the_boxes_of_a_dataset_file(trained_run, written, tmp_path):
    """An upload whose bytes are a file of the run's dataset comes back with that file's boxes
    (original pixels) and a transparent layer drawing them at display size; any other file without."""
    import base64

    from fracture.app import create_app
    from fracture.cam.metrics import boxes_by_path
    from fracture.runs import Run, load_run

    fmt, root = written
    run = load_run(trained_run)
    cfg = fr.load_config(overrides=dict(run.config.to_dict(), data_format=fmt, data_dir=str(root)))
    client = create_app(Run(run.path, run.model, cfg, {}), warm_up=False).test_client()
    path, boxes = next(iter(boxes_by_path(cfg).items()))
    data_bytes = Path(path).read_bytes()

    def post(content):
        return client.post("/api/predict?cam=1", data={"file": (__import__("io").BytesIO(content), "x.png")},
                           content_type="multipart/form-data").get_json()

    answer = post(data_bytes)
    assert answer["boxes"] == [list(b) for b in boxes]
    layer = cv2.imdecode(np.frombuffer(base64.b64decode(answer["boxes_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
    h, w = cv2.imread(path, cv2.IMREAD_GRAYSCALE).shape
    assert layer.shape == (h, w, 4)  # small images are shown at their own size
    drawn = np.argwhere(layer[..., 3] > 0)
    (x0, y0, x1, y1), = boxes
    assert drawn[:, 1].min() == x0 and drawn[:, 0].min() == y0 and drawn[:, 1].max() == x1 - 1 \
        and drawn[:, 0].max() == y1 - 1  # the outline sits on the box's edge pixels, nowhere else
    other = cv2.imencode(".png", np.flipud(cv2.imread(path, cv2.IMREAD_GRAYSCALE)))[1].tobytes()
    assert "boxes" not in post(other)
