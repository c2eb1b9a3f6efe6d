"""Compressed DICOM as scanners and PACS exports store it: every lossless syntax must give the
byte-identical model input of its uncompressed original; a syntax no installed plugin decodes is
refused with a reason that names the syntax and the package that would decode it.

The compressed files are written here from an uncompressed original, by pydicom's encoders (RLE,
JPEG 2000) or by GDCM (JPEG Lossless process 14 and SV1, JPEG-LS), and decoded by fracture's one
decoder; the uncompressed original is the independent reference.
"""

import numpy as np
import pytest

from fracture import data
from fracture.errors import ImageError
from fracture.imageio import decode_gray
from tests.images import HTJ2K_LOSSLESS, dicom_bytes, dicom_in_syntax, dicom_labelled

LOSSLESS = {
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, process 14",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    HTJ2K_LOSSLESS: "HTJ2K lossless",
    "1.2.840.10008.1.2.5": "RLE lossless",
}
LOSSY = {"1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000"}


def _film(bits: int, seed: int = 0) -> np.ndarray:
    """A 64 x 48 radiograph-like picture using the full `bits` range: a gradient, a bright bone
    block and noise (noise defeats any codec that would get away with smoothing)."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    gradient = np.add.outer(np.linspace(0, 0.5, 64), np.linspace(0, 0.3, 48))
    picture = gradient + rng.uniform(0, 0.1, (64, 48))
    picture[20:40, 10:30] += 0.35
    return np.round(picture / picture.max() * top).astype(np.uint16)


CASES = {  # name -> (uncompressed DICOM bytes)
    "12-bit MONOCHROME2": lambda: dicom_bytes(_film(12)),
    "16-bit MONOCHROME1": lambda: dicom_bytes(_film(16, 1), "MONOCHROME1", bits_stored=16),
    "12-bit windowed": lambda: dicom_bytes(_film(12, 2), RescaleSlope=1, RescaleIntercept=-1024,
                                           WindowCenter=1000, WindowWidth=1500),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_syntax_gives_the_uncompressed_bytes(case, syntax, tmp_path):
    original = CASES[case]()
    compressed = dicom_in_syntax(original, syntax)
    assert compressed != original
    reference = decode_gray(original)
    assert reference.max() == 255 and len(np.unique(reference)) > 100  # a real picture, not a flat one
    assert decode_gray(compressed).tobytes() == reference.tobytes(), LOSSLESS[syntax]
    # The model input (decoded, resized, cached) is byte-identical too.
    (tmp_path / "raw.dcm").write_bytes(original)
    (tmp_path / "packed.dcm").write_bytes(compressed)
    images, ok, _ = data.load_images([tmp_path / "raw.dcm", tmp_path / "packed.dcm"], 32)
    assert ok.all() and images[0].tobytes() == images[1].tobytes()


@pytest.mark.parametrize("syntax", LOSSY)
def test_lossy_syntax_decodes_close_to_the_original(syntax):
    original = dicom_bytes(_film(12))
    got = decode_gray(dicom_in_syntax(original, syntax)).astype(int)
    assert np.abs(got - decode_gray(original).astype(int)).mean() < 3, LOSSY[syntax]


def test_missing_plugin_names_the_syntax_and_the_package(monkeypatch):
    from pydicom.pixels import get_decoder

    compressed = dicom_in_syntax(dicom_bytes(_film(12)), "1.2.840.10008.1.2.4.70")
    # As on an install without python-gdcm: pydicom's JPEG Lossless decoder has no plugin.
    monkeypatch.setattr(get_decoder("1.2.840.10008.1.2.4.70"), "_available", {})
    with pytest.raises(ImageError) as caught:
        decode_gray(compressed)
    message = str(caught.value)
    assert "JPEG Lossless" in message and "1.2.840.10008.1.2.4.70" in message
    assert "pip install python-gdcm" in message


def test_a_syntax_pydicom_cannot_decode_says_so():
    mpeg4 = dicom_labelled(dicom_bytes(_film(12)), "1.2.840.10008.1.2.4.102")  # MPEG-4 AVC/H.264: video
    with pytest.raises(ImageError, match=r"MPEG-4.*1\.2\.840\.10008\.1\.2\.4\.102.*gdcmconv --raw"):
        decode_gray(mpeg4)


def test_every_listed_syntax_is_decodable_here():
    """requirements.txt installs a plugin for each syntax the decoder table lists."""
    from fracture.dicomcodecs import DECODERS, undecodable_reason

    assert {uid: undecodable_reason(uid) for uid in DECODERS} == {uid: None for uid in DECODERS}
