import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fracture import data
from fracture.errors import ConfigError, DataError
from fracture.imageio import decode_gray
from tests.images import dicom_bytes


@pytest.fixture
def mura_copy(synth_root, tmp_path):
    """A writable copy of the synthetic tree (some tests damage it)."""
    root = tmp_path / "MURA-v1.1"
    shutil.copytree(synth_root, root)
    return root


def test_mura_reader_rows(synth_root):
    frame = data.index_mura(synth_root)
    assert list(frame.columns) == data.COLUMNS
    assert set(frame["split"]) == {"train", "test"}  # MURA valid serves as the test set
    assert set(frame["study_type"]) == {"XR_HUMERUS"}
    # labels come from the study folder of the very same path
    for path, label in zip(frame["path"], frame["label"]):
        assert Path(path).parent.name.endswith("_positive" if label else "_negative")
    listed = sum(1 for split in ("train", "valid") for _ in open(synth_root / f"{split}_image_paths.csv"))
    assert len(frame) == listed
    assert frame["study"].str.startswith("MURA-v1.1/").all() and frame["study"].str.endswith("/").all()


def test_reader_accepts_parent_folder_and_walks_without_csv(mura_copy):
    with_csv = data.index_mura(mura_copy.parent)
    for csv in mura_copy.glob("*_image_paths.csv"):
        csv.unlink()
    walked = data.index_mura(mura_copy)
    assert sorted(walked["path"]) == sorted(with_csv["path"])


def test_junk_files_are_skipped_without_shifting_labels(mura_copy):
    for csv in mura_copy.glob("*_image_paths.csv"):
        csv.unlink()
    study = next(mura_copy.glob("train/XR_HUMERUS/*/*_positive"))
    (study / "._image1.png").write_bytes(b"\x00junk")
    (study / ".DS_Store").write_bytes(b"junk")
    frame = data.index_mura(mura_copy)
    assert not frame["path"].str.contains(r"/\.").any()
    assert frame.loc[frame["path"].str.contains(study.name + "/"), "label"].eq(1).all()


def test_label_conflict_names_the_study(mura_copy):
    csv = mura_copy / "train_labeled_studies.csv"
    lines = csv.read_text().splitlines()
    study, label = lines[0].rsplit(",", 1)
    lines[0] = f"{study},{1 - int(label)}"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"label conflict for study {study}"):
        data.index_mura(mura_copy)


def test_study_type_filter(tmp_path):
    from fracture.synth import generate

    root = generate(tmp_path, patients=6, seed=1, study_types=("XR_HUMERUS", "XR_WRIST"), max_size=64, min_size=48)
    assert set(data.index_mura(root, "XR_WRIST")["study_type"]) == {"XR_WRIST"}
    assert set(data.index_mura(root, "all")["study_type"]) == {"XR_HUMERUS", "XR_WRIST"}
    assert set(data.index_mura(root, "xr_wrist,XR_HUMERUS")["study_type"]) == {"XR_HUMERUS", "XR_WRIST"}
    with pytest.raises(DataError, match="XR_ELBOW"):
        data.index_mura(root, "XR_ELBOW")  # valid type, but absent from this tree
    with pytest.raises(ConfigError, match="unknown study_type 'XR_KNEE'"):
        data.index_mura(root, "XR_KNEE")


def test_missing_mura_tells_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="data/MURA-v1.1"):
        data.index_mura(tmp_path / "nothing")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_has_no_leakage(synth_root, seed):
    frame = data.split_by_patient(data.index_mura(synth_root), val_fraction=0.3, seed=seed)
    train = set(frame.loc[frame["split"] == "train", "patient"])
    val = set(frame.loc[frame["split"] == "val", "patient"])
    test = set(frame.loc[frame["split"] == "test", "patient"])
    assert train and val and not train & val and not (train | val) & test
    again = data.split_by_patient(data.index_mura(synth_root), val_fraction=0.3, seed=seed)
    pd.testing.assert_frame_equal(frame, again)  # seeded


def patient_table(n_patients=60, seed=0) -> pd.DataFrame:
    """An index of 1-4 images per patient, a third of the patients abnormal (some with a normal
    study too), plus a test split that no fold may touch."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        abnormal = p % 3 == 0
        for i in range(rng.integers(1, 5)):
            label = int(abnormal and (i > 0 or rng.random() < 0.7))
            rows.append(dict(path=f"/d/p{p}/img{i}.png", label=label, patient=f"p{p}", study=f"p{p}/s{label}",
                             study_type="XR_HUMERUS", split="test" if p >= n_patients - 6 else "train"))
    return pd.DataFrame(rows, columns=data.COLUMNS)


@pytest.mark.parametrize("seed", [0, 1])
def test_cv_folds_partition_patients_and_keep_the_class_ratio(seed):
    frame = patient_table()
    pool = frame[frame["split"] == "train"]
    splits = [data.split_by_patient(frame, 0.2, seed, fold=k, folds=5) for k in range(5)]
    val_patients = [set(s.loc[s["split"] == "val", "patient"]) for s in splits]
    assert all(val_patients)
    assert sum(map(len, val_patients)) == len(set().union(*val_patients))  # no patient in two folds
    assert set().union(*val_patients) == set(pool["patient"])  # every training patient held out once
    overall = pool["label"].mean()
    for s, held_out in zip(splits, val_patients):
        assert not held_out & set(s.loc[s["split"] == "train", "patient"])
        pd.testing.assert_series_equal(s["split"] == "test", frame["split"] == "test")  # test untouched
        share = frame.loc[frame["patient"].isin(held_out), "label"].mean()  # counted from the input table
        assert abs(share - overall) < 0.08, (share, overall)
    # The plain split (fold=-1) is fold 0 of round(1 / val_fraction) folds: 0.2 -> 5, 0.3 -> 3.
    pd.testing.assert_frame_equal(data.split_by_patient(frame, 0.2, seed), splits[0])
    pd.testing.assert_frame_equal(data.split_by_patient(frame, 0.3, seed),
                                  data.split_by_patient(frame, 0.2, seed, fold=0, folds=3))


def test_cv_folds_need_enough_patients():
    frame = patient_table(n_patients=10)  # 4 training patients
    with pytest.raises(DataError, match="4 training patients cannot fill 5 patient folds"):
        data.split_by_patient(frame, 0.2, 0, fold=0, folds=5)


def _write_class_folders(root: Path, splits=("train", "val", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("fractured", "not fractured"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(folder / f"img{i}.{'png' if i else 'jpg'}"), rng.integers(0, 255, (40, 30), np.uint8))
            (folder / "notes.txt").write_text("not an image")


def test_class_folder_reader(tmp_path):
    _write_class_folders(tmp_path)
    frame = data.index_folders(tmp_path, positive_class="fractured")
    assert len(frame) == 18 and set(frame["split"]) == {"train", "val", "test"}
    assert frame.loc[frame["path"].str.contains("/not fractured/"), "label"].eq(0).all()
    assert frame.loc[frame["path"].str.contains("/fractured/"), "label"].eq(1).all()
    with pytest.raises(DataError, match="positive_class 'broken'"):
        data.index_folders(tmp_path, positive_class="broken")


def test_class_folder_without_val_gets_a_split(tmp_path):
    _write_class_folders(tmp_path, splits=("train", "test"))
    frame = data.split_by_patient(data.index_folders(tmp_path), val_fraction=0.34, seed=0)
    assert (frame["split"] == "val").sum() == 2



def test_a_cv_fold_pools_the_layouts_own_val_folder(tmp_path):
    _write_class_folders(tmp_path)  # 6 train, 6 val, 6 test images; each image its own patient
    frame = data.split_by_patient(data.index_folders(tmp_path), 0.2, seed=0, fold=1, folds=3)
    assert frame["split"].value_counts().to_dict() == {"train": 8, "val": 4, "test": 6}

@pytest.mark.parametrize("make", [
    lambda: np.full((20, 10), 7, np.uint8),
    lambda: np.full((20, 10), 7 * 257, np.uint16),
    lambda: np.dstack([np.full((20, 10), 7, np.uint8)] * 3),
    lambda: np.dstack([np.full((20, 10), 7, np.uint8)] * 3 + [np.full((20, 10), 255, np.uint8)]),
])
def test_any_depth_and_channels_become_gray_uint8(tmp_path, make):
    path = tmp_path / "x.png"
    image = make()
    image[0, 0] = 0  # a second value so 16-bit scaling is defined
    cv2.imwrite(str(path), image)
    gray = data.read_gray(path)
    assert gray.dtype == np.uint8 and gray.shape == (20, 10)
    assert gray[0, 0] == 0 and gray[5, 5] == 255  # every bit depth: darkest -> 0, brightest -> 255


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_multi_frame_dicom_uses_the_first_frame(tmp_path):
    frames = np.stack([np.arange(12 * 8).reshape(12, 8) * 40, np.zeros((12, 8))])
    gray = data.read_gray(_write(tmp_path / "multi.dcm", dicom_bytes(frames)))
    assert gray.shape == (12, 8) and gray[0, 0] == 0 and gray[-1, -1] == 255


def test_dicom_is_read(tmp_path):
    pixels = np.arange(12 * 8, dtype=np.uint16).reshape(12, 8) * 40
    path = _write(tmp_path / "x.dcm", dicom_bytes(pixels))
    gray = data.read_gray(path)
    assert gray.shape == (12, 8) and gray[0, 0] == 0 and gray[-1, -1] == 255
    assert (decode_gray(path.read_bytes()) == gray).all()  # bytes (the web app) = path (training)


def test_cache_decodes_once_and_reports_unreadable(tmp_path, synth_root, monkeypatch):
    paths = sorted(synth_root.glob("train/XR_HUMERUS/*/*/*.png"))[:5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    files = [*paths[:2], broken, *paths[2:]]
    calls = []
    real = data.read_gray
    monkeypatch.setattr(data, "read_gray", lambda p, *limit: calls.append(p) or real(p, *limit))

    images, ok, skipped = data.load_images(files, 32, tmp_path / "cache")
    assert images.shape == (6, 32, 32, 1) and images.dtype == np.uint8
    assert ok.tolist() == [True, True, False, True, True, True]
    assert skipped["path"].tolist() == [str(broken)] and "not a readable image" in skipped["reason"][0]
    assert len(calls) == 6

    again, ok2, skipped2 = data.load_images(files, 32, tmp_path / "cache")
    assert len(calls) == 6  # second pass (the next epoch, the next run) decodes no file
    assert (again == images).all() and (ok2 == ok).all() and skipped2.equals(skipped)
    data.load_images(files, 40, tmp_path / "cache")  # another size is another cache entry
    assert len(calls) == 12
    data.load_images(files, 40, tmp_path / "cache", max_pixels=10_000)  # so is another pixel limit
    assert len(calls) == 18


def test_cache_key_changes_with_the_decoder_version(tmp_path, monkeypatch):
    files = [str(tmp_path / "a.png")]
    before = data.cache_key(files, 32)
    monkeypatch.setattr(data, "DECODER_VERSION", data.DECODER_VERSION + 1)
    assert data.cache_key(files, 32) != before  # arrays from an older decoder are not reused


def test_training_batches_are_full_cover_every_image_and_reshuffle(synth_root):
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(4, 1).repeat(4, 2)
    labels = (np.arange(10) % 2).astype(np.float32)
    weights = np.where(labels == 1, 0.3, 0.7).astype(np.float32)
    batches = data.make_batches(images, labels, 4, shuffle=True, seed=0, sample_weights=weights)
    assert len(batches) == 3
    first = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(3)])
    # one shape for every batch (no second trace); the 2 extra images are repeats from this epoch
    assert len(first) == 12 and set(first.tolist()) == set(range(10))
    for i in range(3):
        x, y, w = batches[i]
        assert x.shape == (4, 4, 4, 1) and x.dtype == np.float32 and (y[:, 0] == x[:, 0, 0, 0] % 2).all()
        assert np.allclose(w, np.where(y[:, 0] == 1, 0.3, 0.7))
    batches.on_epoch_end()
    second = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(3)])
    assert set(second.tolist()) == set(range(10)) and second.tolist() != first.tolist()


def test_evaluation_batches_are_each_image_once_in_order():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    batches = data.make_batches(images, np.zeros(10, np.float32), 4, shuffle=False)
    seen = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))])
    assert seen.tolist() == list(range(10))
