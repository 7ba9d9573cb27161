"""Recompress a wheel with LZMA, so that it fits what may travel to the GPU machine (64 MiB a call, tree included).

numba-cuda-mlir's wheel is 68 MiB as PyPI ships it (zip's deflate); the same files in LZMA take about 48 MiB, and
pip installs the result as it is (a wheel is a zip, and Python's zipfile reads LZMA members). The files and
their RECORD are unchanged: only how each member is compressed.

    python benchmarks/repack_wheel.py SRC.whl DEST_DIR
"""

import sys
import zipfile
from pathlib import Path


def repack(src, dest_dir):
    dest = Path(dest_dir) / Path(src).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            data = zin.read(info)  # before the next line: zin decompresses by info.compress_type
            info.compress_type = zipfile.ZIP_LZMA
            zout.writestr(info, data)
    return dest


if __name__ == "__main__":
    out = repack(sys.argv[1], sys.argv[2])
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
