"""Is an image file whole? Checks that readers skip.

SimpleITK (and so nnU-Net's default reader) reads a truncated ``.nii.gz`` without an error: the voxels after
the cut come back as zeros. A pool built from such a file trains on a blank or partly blank image and nothing
says so. Two checks catch it before the reader runs:

* a gzip file must decode to its end-of-stream marker;
* a NIfTI file (``.nii`` or ``.nii.gz``, NIfTI-1 or NIfTI-2) must hold at least ``vox_offset`` plus the bytes its
  header's dimensions and ``bitpix`` promise.

Other formats are left to their readers. Nothing here depends on nnU-Net.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from typing import BinaryIO, Optional

from nnunet_dinomix.errors import DinoMixError

_CHUNK = 1 << 20


class IncompleteImageError(DinoMixError):
    pass


def _nifti_expected_bytes(header: bytes) -> Optional[int]:
    """Bytes a NIfTI file must have (header, extensions and voxels), or None if ``header`` is not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:  # NIfTI-1
            dim = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:  # NIfTI-2
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n_dims = dim[0]
    if not 1 <= n_dims <= 7 or bitpix <= 0 or vox_offset <= 0:
        return None  # not a header we understand, or a .hdr whose voxels live in an .img: the reader decides
    voxels = 1
    for d in dim[1:1 + n_dims]:
        voxels *= max(int(d), 1)
    return vox_offset + voxels * bitpix // 8


def _count_and_head(stream: BinaryIO, head: int = 540) -> tuple:
    first = stream.read(head)
    total = len(first)
    while True:
        block = stream.read(_CHUNK)
        if not block:
            return first, total
        total += len(block)


def check_complete(path: str) -> None:
    """Raise :class:`IncompleteImageError`, naming ``path``, if the file is visibly cut short or corrupt."""
    lower = path.lower()
    if lower.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as stream:
                head, size = _count_and_head(stream)
        except (EOFError, OSError, zlib.error) as e:  # BadGzipFile is an OSError
            raise IncompleteImageError(
                f"{path} is truncated or corrupt ({type(e).__name__}: {e}). It would be read with zeros in place "
                f"of the missing data; copy or export it again.") from e
    elif lower.endswith(".nii"):
        with open(path, "rb") as stream:
            head, size = _count_and_head(stream)
    else:
        return
    if lower.endswith((".nii", ".nii.gz")):
        expected = 348 if size < 348 else _nifti_expected_bytes(head)  # shorter than any NIfTI header
        if expected is not None and size < expected:
            raise IncompleteImageError(
                f"{path} is truncated: as a NIfTI file it needs at least {expected} bytes (header and voxels), it "
                f"holds {size}. It would be "
                f"read with zeros in place of the missing voxels; copy or export it again.")


def check_scalar(path: str) -> None:
    """Refuse a vector image (several components per voxel, e.g. RGB or a 2-vector field): nnU-Net would read
    its components as an extra axis and report a nonsense channel count. Files SimpleITK cannot inspect are left
    to the dataset's reader."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return
    components = reader.GetNumberOfComponents()
    if components > 1:
        raise DinoMixError(f"{path} has {components} components per voxel (a vector image). nnU-Net expects one "
                           f"scalar image per channel: split it into CASE_0000, CASE_0001, ... files, as in imagesTr.")


__all__ = ["IncompleteImageError", "check_complete", "check_scalar"]
