"""Which package decodes which compressed DICOM transfer syntax, and what to say when none is installed.

pydicom decodes uncompressed and RLE pixel data itself; every other compressed syntax needs a
plugin. The permissively licensed ones in requirements.txt cover every syntax radiology exports use:

    syntax (UID)                                   decoded by (installed with requirements.txt)
    JPEG Baseline / Extended (1.2.840.10008.1.2.4.50/.51)    Pillow, python-gdcm
    JPEG Lossless, process 14 (.4.57) and SV1 (.4.70)        python-gdcm
    JPEG-LS lossless / near-lossless (.4.80/.81)             python-gdcm
    JPEG 2000 lossless / lossy (.4.90/.91)                   pylibjpeg-openjpeg, python-gdcm, Pillow
    HTJ2K (.4.201/.202/.203)                                 pylibjpeg-openjpeg
    RLE Lossless (.5)                                        pydicom itself, pylibjpeg-rle (faster)

pylibjpeg-libjpeg (GPLv3) would also decode JPEG Lossless and JPEG-LS; it is not required and
pydicom uses it only if someone installs it.

`fracture.imageio` calls `check_decodable` before it decodes pixels, so a file in a syntax that
no installed plugin reads is refused with a reason naming the syntax and the package to install.
"""

from __future__ import annotations

from fracture.errors import ImageError

# transfer syntax UID -> the permissively licensed packages that decode it (pip names)
DECODERS = {
    "1.2.840.10008.1.2.4.50": ("pillow", "python-gdcm"),
    "1.2.840.10008.1.2.4.51": ("pillow", "python-gdcm"),
    "1.2.840.10008.1.2.4.57": ("python-gdcm",),
    "1.2.840.10008.1.2.4.70": ("python-gdcm",),
    "1.2.840.10008.1.2.4.80": ("python-gdcm",),
    "1.2.840.10008.1.2.4.81": ("python-gdcm",),
    "1.2.840.10008.1.2.4.90": ("pylibjpeg-openjpeg", "python-gdcm", "pillow"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg-openjpeg", "python-gdcm", "pillow"),
    "1.2.840.10008.1.2.4.201": ("pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.4.202": ("pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.4.203": ("pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.5": ("pylibjpeg-rle",),
}
CONVERT_HINT = "convert the file to an uncompressed syntax first, e.g. `gdcmconv --raw in.dcm out.dcm`"


def syntax_name(transfer_syntax) -> str:
    """'JPEG Lossless, Non-Hierarchical, First-Order Prediction (...) (1.2.840.10008.1.2.4.70)'."""
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    return f"{uid.name} ({uid})" if uid.name != str(uid) else f"transfer syntax {uid}"


def undecodable_reason(transfer_syntax) -> str | None:
    """None when an installed plugin decodes this syntax, else why not and what would."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(str(transfer_syntax))
    except NotImplementedError:  # pydicom knows no decoder for it at all (MPEG, JPEG XL, ...)
        return f"{syntax_name(transfer_syntax)} cannot be decoded by pydicom or its plugins; {CONVERT_HINT}"
    if decoder.is_available:
        return None
    packages = DECODERS.get(str(transfer_syntax))
    if packages:
        wanted = " or ".join(packages)
        return (f"{syntax_name(transfer_syntax)} needs a decoder plugin that is not installed: "
                f"pip install {wanted} (listed in requirements.txt)")
    return f"no installed pydicom plugin decodes {syntax_name(transfer_syntax)}; {CONVERT_HINT}"


def check_decodable(ds) -> None:
    """ImageError naming the transfer syntax (and the package that would decode it) when no installed
    plugin reads this dataset's pixel data; nothing for uncompressed and decodable syntaxes."""
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None:
        return  # no file meta: pydicom assumes implicit little endian, which it always reads
    reason = undecodable_reason(syntax)
    if reason:
        raise ImageError(f"cannot decode DICOM pixels: {reason}")


def installed_decoders() -> dict[str, tuple[str, ...]]:
    """{syntax name (UID): the pydicom plugins that decode it here}: what this install reads."""
    from pydicom.pixels import get_decoder

    out = {}
    for uid in DECODERS:
        decoder = get_decoder(uid)
        out[syntax_name(uid)] = tuple(decoder.available_plugins) or (("pydicom",) if decoder.is_available else ())
    return out
