"""Hand-made image files for tests: DICOMs with chosen tags and PNGs whose header lies."""

import io
import struct
import zlib

import numpy as np


def dicom_bytes(pixels, photometric="MONOCHROME2", rows=None, columns=None, frames=None, bits_stored=12,
                **elements) -> bytes:
    """A 16-bit DICOM file (CR, explicit little endian) holding `pixels` (H, W) or frames (F, H, W).
    rows/columns/frames may lie about the pixel data (bomb tests); `elements` sets any other tag."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows or pixels.shape[-2], columns or rows or pixels.shape[-1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    frames = frames or (pixels.shape[0] if pixels.ndim == 3 else None)
    if frames:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking 8-bit gray PNG whose header claims width x height pixels but carries almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))
