"""A corpus of awkward and hostile image files, each run through the three roads to the model:
the training decode (`data.load_images`), `predict` (`predict_paths` and the CLI) and the web app
(POST /api/predict). All three must agree: a readable file gives a probability from the same model
input, an unreadable one is skipped / marked unreadable / answered 400, with the same reason.

Where it means something, the decoded pixels are checked against expectations computed without
the decoder: by hand with numpy (the stretch, MONOCHROME1, the DICOM window) or by Pillow (colour
conversion, EXIF orientation).
"""

import base64
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fracture import data
from fracture.cli import main
from fracture.errors import ImageError
from fracture.imageio import decode_gray
from tests.images import dicom_bytes, dicom_in_syntax, dicom_labelled, png_claiming


# --------------------------------------------------------------------------------------------
# independent expectations and file builders
# --------------------------------------------------------------------------------------------
def by_hand(values) -> np.ndarray:
    """The documented rule, in floating point: darkest -> 0, brightest -> 255, round half up."""
    v = np.asarray(values, np.float64)
    return np.floor((v - v.min()) * 255 / (v.max() - v.min()) + 0.5).astype(np.uint8)


def pillow_gray(path, transpose=False) -> np.ndarray:
    """Pillow's own decode (and EXIF transpose), gray by Pillow's conversion, then the stretch."""
    from PIL import ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image) if transpose else image
        return by_hand(np.asarray(image.convert("RGB").convert("L")))


# A small X-ray-like picture: a gradient with a bright "bone" block, values 20..200 (not 0..255,
# so the stretch has work to do). 40 rows x 24 columns: not square, so a rotation shows.
ROWS, COLS = 40, 24
PICTURE = (20 + np.add.outer(np.arange(ROWS) * 3, np.arange(COLS) * 2)).astype(np.uint8)
PICTURE[4:12, 3:9] = 200  # top-left block: where it lands tells the orientation

# DICOM: stored values 0..2000; modality LUT 2x - 100 (-100..3900), then a window 1900 +- 500.
STORED = (np.add.outer(np.arange(ROWS) * 40, np.arange(COLS) * 15) % 2001).astype(np.uint16)
SLOPE, INTERCEPT, CENTER, WIDTH = 2, -100, 1900, 1000


def windowed_by_hand(stored) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (linear VOI), written out, after the modality LUT."""
    x = stored.astype(np.float64) * SLOPE + INTERCEPT
    y = np.clip((x - (CENTER - 0.5)) / (WIDTH - 1) + 0.5, 0, 1)
    return np.floor(y * 255 + 0.5).astype(np.uint8)


UNREADABLE = {  # file name -> words the reason must contain
    "text.png": "not a readable image",
    "zero_bytes.png": "empty file",
    "truncated.png": "truncated PNG",
    "truncated.jpg": "truncated JPEG",
    "bomb_40000x40000.png": "too many pixels",  # above OpenCV's own 1 GP limit (cv2.error before)
    "bomb_30000x30000.png": "too many pixels",  # below it (OpenCV decoded 900 MP: 2.9 GB RSS)
    "bomb_just_over_limit.png": "too many pixels",
    "bomb_frames.dcm": "too many pixels",
    "broken.dcm": "DICOM",
    "mpeg4_video.dcm": "1.2.840.10008.1.2.4.102",  # a syntax no plugin decodes: named in the reason
    "no_suffix_junk": "not a readable image",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{file name: (path, expected uint8 pixels or None, tolerance)} plus the unreadable files."""
    root = tmp_path_factory.mktemp("corpus")
    files = {}

    def add(name, content, expected=None, tolerance=0):
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
        files[name] = (path, expected, tolerance)

    def cv2_write(image, *params):
        return lambda path: cv2.imencode(path.suffix, image, list(params))[1].tofile(str(path))

    def pil_write(image, fmt, **options):
        return lambda path: image.save(path, fmt, **options)

    expected = by_hand(PICTURE)
    rgb = np.dstack([PICTURE, PICTURE // 2, 255 - PICTURE])
    add("gray8.png", cv2_write(PICTURE), expected)
    add("gray16_x257.png", cv2_write(PICTURE.astype(np.uint16) * 257), expected)
    add("gray16_unscaled.png", cv2_write(PICTURE.astype(np.uint16)), expected)
    add("Röntgen_骨折.png", cv2_write(PICTURE), expected)
    add("rgba.png", cv2_write(np.dstack([rgb[..., ::-1], np.linspace(0, 255, COLS, dtype=np.uint8)[None].repeat(ROWS, 0)])))
    add("palette.png", pil_write(Image.fromarray(rgb).convert("P"), "PNG"))
    add("cmyk.jpg", pil_write(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    add("progressive.jpg", cv2_write(PICTURE, cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    add("gray8.tif", cv2_write(PICTURE), expected)
    add("gray8.bmp", cv2_write(PICTURE), expected)
    add("one_pixel.png", cv2_write(np.full((1, 1), 90, np.uint8)), np.zeros((1, 1), np.uint8))
    wide = np.tile(np.arange(4000) % 251, (50, 1)).astype(np.uint8)
    add("wide_4000x50.png", cv2_write(wide), by_hand(wide))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    add("exif_rotated.jpg", pil_write(Image.fromarray(PICTURE), "JPEG", quality=95, exif=exif))
    for suffix in (".dcm", ""):
        add(f"mono2{suffix}", dicom_bytes(STORED), by_hand(STORED))
        add(f"mono1{suffix}", dicom_bytes(STORED, "MONOCHROME1"), by_hand(STORED.max() - STORED.astype(np.int64)))
    add("window.dcm", dicom_bytes(STORED, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT,
                                  WindowCenter=CENTER, WindowWidth=WIDTH), windowed_by_hand(STORED), 1)
    # Compressed as PACS exports store it (lossless: the same bytes as the uncompressed mono2)
    for syntax, name in [("1.2.840.10008.1.2.4.57", "jpeg_lossless_p14"), ("1.2.840.10008.1.2.4.70", "jpeg_lossless_sv1"),
                         ("1.2.840.10008.1.2.4.80", "jpeg_ls"), ("1.2.840.10008.1.2.5", "rle")]:
        add(f"mono2_{name}.dcm", dicom_in_syntax(dicom_bytes(STORED), syntax), by_hand(STORED))

    png, jpg = cv2.imencode(".png", PICTURE)[1].tobytes(), cv2.imencode(".jpg", PICTURE)[1].tobytes()
    add("text.png", b"patient notes, not an X-ray\n" * 20)
    add("zero_bytes.png", b"")
    add("truncated.png", png[: len(png) // 2])
    add("truncated.jpg", jpg[: len(jpg) * 6 // 10])
    add("bomb_40000x40000.png", png_claiming(40_000, 40_000))
    add("bomb_30000x30000.png", png_claiming(30_000, 30_000))
    add("bomb_just_over_limit.png", png_claiming(6325, 6325))  # 40,005,625 pixels
    add("bomb_frames.dcm", dicom_bytes(np.zeros((2, 2)), rows=2000, frames=20))  # 80 MP in 20 frames
    add("broken.dcm", dicom_bytes(STORED)[:300])
    add("mpeg4_video.dcm", dicom_labelled(dicom_bytes(STORED), "1.2.840.10008.1.2.4.102"))
    add("no_suffix_junk", bytes(range(256)) * 4)
    assert len(files) >= 33
    return files


def readable(corpus):
    return [name for name in corpus if name not in UNREADABLE]


# --------------------------------------------------------------------------------------------
# the decoded pixels, against independent expectations (no model needed)
# --------------------------------------------------------------------------------------------
def test_pixels_match_independent_expectations(corpus):
    checked = 0
    for name, (path, expected, tolerance) in corpus.items():
        if expected is None:
            continue
        gray = decode_gray(path)
        assert gray.dtype == np.uint8 and gray.shape == expected.shape, name
        assert np.abs(gray.astype(int) - expected).max() <= tolerance, name
        checked += 1
    assert checked == 17


def test_8_and_16_bit_give_identical_bytes(corpus):
    decoded = [decode_gray(corpus[name][0]) for name in ("gray8.png", "gray16_x257.png", "gray16_unscaled.png")]
    assert decoded[0].tobytes() == decoded[1].tobytes() == decoded[2].tobytes()
    assert decoded[0].min() == 0 and decoded[0].max() == 255


@pytest.mark.parametrize("name", ["rgba.png", "palette.png", "cmyk.jpg", "progressive.jpg", "exif_rotated.jpg"])
def test_colour_modes_and_orientation_match_pillow(corpus, name):
    path = corpus[name][0]
    gray = decode_gray(path)
    # Pillow (its own decoder, colour conversion and EXIF transpose) as the oracle; a few levels
    # of rounding apart: OpenCV and Pillow convert colour with different fixed-point arithmetic,
    # and the stretch multiplies a one-level difference by 255 / (max - min).
    np.testing.assert_allclose(gray, pillow_gray(path, transpose=True), atol=3)


def test_exif_rotation_turns_the_picture(corpus):
    gray = decode_gray(corpus["exif_rotated.jpg"][0])
    assert gray.shape == (COLS, ROWS)  # 90 degrees: rows and columns swap
    # Turned clockwise, the block at the top-left (rows 4-12, columns 3-9) moves to the top-right:
    # new row = old column, new column = ROWS - 1 - old row.
    rows, cols = np.nonzero(gray > 240)  # the block (255 give or take JPEG noise), and only it
    assert len(rows) == 48 and set(rows) == set(range(3, 9)) and set(cols) == set(range(ROWS - 12, ROWS - 4))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # PNG: lossless, and its EXIF sits in an eXIf chunk
    Image.fromarray(PICTURE).save(path, "PNG", exif=exif)
    np.testing.assert_array_equal(decode_gray(path), pillow_gray(path, transpose=True))


def test_a_bomb_is_refused_from_its_header_whatever_the_limit(corpus):
    with pytest.raises(ImageError, match=r"6325x6325 = 40,005,625, the limit is 40,000,000"):
        decode_gray(corpus["bomb_just_over_limit.png"][0])
    with pytest.raises(ImageError, match="too many pixels: .*1600000000 pixels"):  # Pillow's own limit
        decode_gray(corpus["bomb_40000x40000.png"][0])
    with pytest.raises(ImageError, match="too many pixels"):  # 1000 px allowed: the 960-px PICTURE passes,
        decode_gray(corpus["wide_4000x50.png"][0], max_pixels=1000)  # the 200,000-px one does not
    assert decode_gray(corpus["gray8.png"][0], max_pixels=1000).shape == (ROWS, COLS)


# --------------------------------------------------------------------------------------------
# the three roads agree
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(trained_run):
    from fracture.runs import load_run

    return load_run(trained_run)


@pytest.fixture(scope="module")
def client(run):
    from fracture.app import create_app

    return create_app(run, warm_up=False).test_client()


def upload(client, path):
    return client.post("/api/predict?image=1", data={"file": (io.BytesIO(path.read_bytes()), path.name)},
                       content_type="multipart/form-data")


def test_training_predict_and_app_agree(corpus, run, client):
    from fracture.evaluation import predict_paths

    names = list(corpus)
    paths = [corpus[name][0] for name in names]
    size = run.config.image_size

    # (a) training: decoded once, unreadable files skipped with their reason
    images, ok, skipped = data.load_images(paths, size)
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    # (b) predict
    table = predict_paths(run, paths).set_index("path")
    for i, (name, path) in enumerate(zip(names, paths)):
        row = table.loc[str(path)]
        # (c) the web app, with the image it decoded sent back (at display size, <= 512 px)
        response = upload(client, path)
        body = response.get_json()
        if name in UNREADABLE:
            assert not ok[i] and row["label"] == "unreadable" and response.status_code == 400, name
            assert UNREADABLE[name] in reasons[str(path)], (name, reasons[str(path)])
            assert reasons[str(path)] == row["reason"] == body["message"], name  # one reason, three roads
            continue
        assert ok[i] and response.status_code == 200, (name, body)
        assert row["label"] in ("normal", "abnormal") and row["reason"] == ""
        assert body["probability"] == pytest.approx(row["probability"], abs=1e-5), name
        shown = cv2.imdecode(np.frombuffer(base64.b64decode(body["image_png"]), np.uint8), cv2.IMREAD_UNCHANGED)
        if max(shown.shape) < 512:  # not scaled for display: the app's decode itself
            assert (data.resize(shown, size) == images[i, :, :, 0]).all(), name  # the same model input
    assert set(names) - set(UNREADABLE) == {n for n, good in zip(names, ok) if good}


def test_predict_cli_lists_unreadable_files_and_exits_2(corpus, run, capsys):
    paths = [str(p) for p, _, _ in corpus.values()]
    assert main(["predict", *paths, "--run", str(run.path)]) == 2
    out, err = capsys.readouterr()
    rows = out.strip().splitlines()
    assert rows[0].split() == ["path", "probability", "label"]
    assert len(rows) == 1 + len(readable(corpus))
    assert f"error: {len(UNREADABLE)} of {len(corpus)} inputs could not be read" in err
    for name, words in UNREADABLE.items():
        line = next(line for line in err.splitlines() if line.startswith(f"unreadable: {corpus[name][0]}:"))
        assert words in line
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# folders: empty, junk, and DICOM files without a suffix
# --------------------------------------------------------------------------------------------
def test_folders_empty_junk_and_dicom_without_suffix(corpus, run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    shutil.copy(corpus["gray8.png"][0], junk / "._image1.png")  # macOS AppleDouble: skipped even if valid
    (junk / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" * 10)
    (junk / "notes.txt").write_text("not an image")
    for folder in (empty, junk):
        assert main(["predict", str(folder), "--run", str(run.path)]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("error: no image files in") and not out and "Empty DataFrame" not in out

    # A scanner's folder: a DICOM named by its UID, one with no suffix, among the junk.
    shutil.copy(corpus["mono2"][0], junk / "1.2.840.113619.2.55.3.604688")
    shutil.copy(corpus["mono1"][0], junk / "IM0001")
    found = data.expand_image_paths([junk])
    assert [p.name for p in found] == ["1.2.840.113619.2.55.3.604688", "IM0001"]
    # a file named explicitly is always tried, and then judged by its bytes
    assert data.expand_image_paths([junk / "notes.txt"]) == [junk / "notes.txt"]
    # the training index walks class folders with the same rule
    for split, label in (("train", "fractured"), ("train", "normal")):
        (tmp_path / "layout" / split / label).mkdir(parents=True)
    shutil.copytree(junk, tmp_path / "layout" / "train" / "fractured", dirs_exist_ok=True)
    frame = data.index_folders(tmp_path / "layout")
    assert sorted(Path(p).name for p in frame["path"]) == ["1.2.840.113619.2.55.3.604688", "IM0001"]
