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


# Lossless transfer syntaxes a test file can be written in, and the encoder that writes each: pydicom's
# own encoders where it has one, GDCM where only GDCM encodes (JPEG Lossless, JPEG-LS).
GDCM_SYNTAXES = {"1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14", "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",
                 "1.2.840.10008.1.2.4.80": "JPEGLSLossless", "1.2.840.10008.1.2.4.81": "JPEGLSNearLossless",
                 "1.2.840.10008.1.2.4.91": "JPEG2000"}
PYDICOM_SYNTAXES = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90")  # RLE Lossless, JPEG 2000 lossless
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


def dicom_in_syntax(uncompressed: bytes, syntax: str) -> bytes:
    """An uncompressed DICOM file re-encoded in `syntax` (a transfer syntax UID).

    HTJ2K: no installed encoder writes HT code-blocks, so the file holds a lossless JPEG 2000
    part-1 codestream labelled with the HTJ2K lossless syntax (an HTJ2K decoder reads part-1
    codestreams too); it exercises the decode road for that syntax, not the HT block coder."""
    import tempfile
    from pathlib import Path

    import pydicom

    if syntax in PYDICOM_SYNTAXES or syntax == HTJ2K_LOSSLESS:
        ds = pydicom.dcmread(io.BytesIO(uncompressed))
        ds.compress("1.2.840.10008.1.2.4.90" if syntax == HTJ2K_LOSSLESS else syntax)
        if syntax == HTJ2K_LOSSLESS:
            ds.file_meta.TransferSyntaxUID = HTJ2K_LOSSLESS
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    import gdcm

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        source.write_bytes(uncompressed)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        assert reader.Read(), "gdcm cannot read the uncompressed file"
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[syntax])))
        change.SetInput(reader.GetImage())
        assert change.Change(), f"gdcm cannot encode {syntax}"
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
        data = target.read_bytes()
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    return data


def dicom_labelled(uncompressed: bytes, syntax: str) -> bytes:
    """The file's pixels wrapped as one encapsulated fragment under another transfer syntax:
    a file in a syntax no decoder reads (a video syntax, say), for the refusal's reason."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(uncompressed))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([bytes(ds.PixelData)])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()
