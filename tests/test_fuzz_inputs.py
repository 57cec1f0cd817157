"""Hundreds of randomly corrupted headers and metadata files -- NIfTI, NRRD, MetaImage,
TIFF, OME-Zarr (zarr.json, .zattrs, a level's array metadata) and transform manifests
-- given to the CLI the way a user would (``convert --dry-run``, ``info``,
``transform-points``).  Each must end within seconds and under 1 GiB with exit code 0
(the file still reads) or 2 and one line on stderr naming the problem: never a
traceback, never an internal error, never a hang.

The corruptions are made here, from good files, with a fixed seed: field-aware ones
(a header's numbers replaced by hostile values: zero, negative, huge, NaN, the wrong
type; JSON values replaced, deleted or nested) and blind ones (random bytes,
truncation).  The cases run in tests/fuzz_runner.py, one forked child each.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conftest import phantom

HERE = Path(__file__).resolve().parent
SEED = 20261207
PER_FAMILY = 45  # cases per family; six families
MEMORY_LIMIT = 2**30
SECONDS_LIMIT = 10.0
HOSTILE_NUMBERS = [0, -1, 1, 2, 3, 7, 255, 32767, -32768, 2**31 - 1, 2**31, 2**53, 10**12, 10**300, 1e-300, 1e308, -1e308]
HOSTILE_VALUES: list[Any] = [None, True, "", "..", "../..", "/", "a" * 5000, [], {}, [1, 2], {"a": 1}, [[[[[]]]]], "NaN"]


# ----------------------------------------------------------------------------- good files


def _good_files(root: Path) -> dict[str, Path]:
    import ants
    import nibabel as nib
    import tifffile

    from scalereg.convert import convert_volume

    volume = phantom((10, 12, 14), "uint16")
    files: dict[str, Path] = {}
    files["nii"] = root / "good.nii"
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.05, 0.05, 0.05, 1])), files["nii"])
    files["nrrd"] = root / "good.nrrd"
    header = "NRRD0004\ntype: uint16\ndimension: 3\nspace: left-posterior-superior\nsizes: 14 12 10\n" \
             "space directions: (0.05,0,0) (0,0.05,0) (0,0,0.05)\nspace origin: (0,0,0)\nendian: little\nencoding: raw\n\n"  # fmt: skip
    files["nrrd"].write_bytes(header.encode() + volume.astype("<u2").tobytes())
    files["mha"] = root / "good.mha"
    header = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n" \
             "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 0.05 0.05 0.05\nDimSize = 14 12 10\n" \
             "ElementType = MET_USHORT\nElementDataFile = LOCAL\n"  # fmt: skip
    files["mha"].write_bytes(header.encode() + volume.astype("<u2").tobytes())
    files["tif"] = root / "good.tif"
    tifffile.imwrite(files["tif"], volume)
    files["tif-zlib"] = root / "good-zlib.tif"
    tifffile.imwrite(files["tif-zlib"], volume, compression="zlib")
    for version in ("0.5", "0.4"):
        name = f"ome-{version}"
        files[name] = root / f"good-{version}.ome.zarr"
        source = root / f"{name}.src.zarr"
        import zarr

        zarr.save_array(str(source), volume)
        convert_volume(str(source), str(files[name]), spacing=(50, 50, 50), orientation="asr", chunks=8, min_size=4, ngff_version=version)
    files["points"] = root / "points.csv"
    files["points"].write_text("x,y,z\n1.0,2.0,3.0\n-5,0.5,100\n")
    files["transform"] = root / "transform"
    _transform_directory(files["transform"], ants, files["ome-0.5"])
    return files


def _transform_directory(directory: Path, ants: Any, image: Path) -> None:
    """A small transform directory as scalereg writes one: an affine and its manifest,
    registered from ``image`` to itself."""
    from scalereg.transforms.transform_checksums import ALGORITHMS, file_checksum

    from scalereg.omezarr import read_pyramid
    from scalereg.transforms.grid import lps_bounds_um

    layout = read_pyramid(str(image))
    geometry = layout.geometry
    record = {
        "uri": str(image), "orientation": geometry.orientation, "unit": geometry.unit, "shape": list(layout.levels[0].shape),
        "spacing": list(geometry.spacing), "origin": list(geometry.origin),
        "lps_bounds_um": [list(map(float, b)) for b in lps_bounds_um(geometry, layout.levels[0].shape)], "fingerprints": {},
    }  # fmt: skip
    (directory / "forward").mkdir(parents=True)
    affine = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=np.eye(3) * 1.1, offset=(1.0, 2.0, 3.0))
    ants.write_transform(affine, str(directory / "forward" / "affine.mat"))
    manifest = {
        "scalereg_version": "0.1.0",
        "kind": "scalereg-transform",
        "inputs_key": "0123456789abcdef",
        "fixed": record,
        "moving": record,
        "space": {"physical": "LPS", "unit": "micrometer"},
        "outputs": {
            "affine": "forward/affine.mat",
            "forward": ["forward/affine.mat"],
            "inverse": ["forward/affine.mat"],
            "inverse_invert": [True],
            "chains": {"forward": [{"kind": "affine", "path": "forward/affine.mat"}], "inverse": [{"kind": "affine", "path": "forward/affine.mat", "invert": True}]},
        },
        "checksums": {"algorithm": dict(ALGORITHMS), "files": {"forward/affine.mat": file_checksum(str(directory / "forward" / "affine.mat"))}, "fields": {}},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (directory / "inputs_key").write_text(manifest["inputs_key"])


# -------------------------------------------------------------------------- corruptions


def _flip_bytes(data: bytes, rng: random.Random, region: int | None = None) -> bytes:
    buffer = bytearray(data)
    span = min(len(buffer), region or len(buffer))
    for _ in range(rng.randint(1, 8)):
        buffer[rng.randrange(span)] = rng.randrange(256)
    return bytes(buffer)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _nifti_fields(data: bytes, rng: random.Random) -> bytes:
    """A NIfTI-1 header with a few of its fields set to hostile values."""
    buffer = bytearray(data)
    fields = [  # (offset, struct format, values)
        (0, "<i", [0, 348, -1, 540, 2**31 - 1]),  # sizeof_hdr
        (40, "<h", [0, 1, 2, 3, 4, 5, 7, 8, -1]),  # dim[0]
        (42, "<h", [0, -1, 1, 32767]), (44, "<h", [0, -1, 32767]), (46, "<h", [0, -1, 32767]),  # dim[1..3]
        (48, "<h", [0, 2, 32767]),  # dim[4]
        (70, "<h", [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 9999]),  # datatype
        (72, "<h", [0, 1, 7, 24, 128, -8]),  # bitpix
        (76, "<f", [float("nan"), float("inf"), -1.0, 0.0]),  # pixdim[0] (qfac)
        (80, "<f", [0.0, -1.0, float("nan"), float("inf"), 1e38, 1e-38]), (84, "<f", [0.0, float("nan"), 1e38]), (88, "<f", [0.0, -0.5, float("inf")]),
        (108, "<f", [-1.0, 0.0, 1e30, float("nan"), 3.5]),  # vox_offset
        (112, "<f", [float("nan"), float("inf"), 0.0, -1e30]), (116, "<f", [float("nan"), float("inf")]),  # scl_slope, scl_inter
        (123, "<B", [0, 1, 2, 3, 7, 8, 16, 24, 255]),  # xyzt_units
        (252, "<h", [0, 1, 2, 3, 4, 99, -1]), (254, "<h", [0, 1, 2, 3, 4, 99, -1]),  # qform_code, sform_code
        (256, "<f", [float("nan"), 2.0, -2.0]), (268, "<f", [float("nan"), float("inf"), 1e38]),  # quatern_b, qoffset_x
        (280, "<f", [float("nan"), float("inf"), 0.0, 1e38]), (292, "<f", [float("nan"), 0.0]), (304, "<f", [float("nan"), 0.0]),  # srow_x[0], srow_y[0], srow_z[0]
        (344, "4s", [b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx"]),  # magic
    ]
    for offset, fmt, values in rng.sample(fields, rng.randint(1, 3)):
        struct.pack_into(fmt, buffer, offset, rng.choice(values))
    return bytes(buffer)


def _text_header(header: str, data: bytes, rng: random.Random, separator: str, hostile: dict[str, list[str]]) -> bytes:
    """A text header (NRRD: 'key: value', MetaImage: 'Key = Value') with a few fields
    replaced, dropped or duplicated, then the voxels."""
    lines = header.rstrip("\n").split("\n")
    keyed = [i for i, line in enumerate(lines) if separator in line]
    for _ in range(rng.randint(1, 3)):
        i = rng.choice(keyed)
        key = lines[i].split(separator, 1)[0]
        action = rng.random()
        if action < 0.7 and key.strip() in hostile:
            lines[i] = f"{key}{separator}{rng.choice(hostile[key.strip()])}"
        elif action < 0.85:
            lines[i] = ""
        else:
            lines.insert(i, lines[i])
    text = "\n".join(line for line in lines if line)
    return (text + ("\n\n" if separator == ": " else "\n")).encode("latin-1", errors="replace") + data


NRRD_HOSTILE = {
    "type": ["uint16", "float", "complex", "block", "int64", "unsigned char", "garbage"],
    "dimension": ["0", "2", "4", "-3", "100", "x"],
    "sizes": ["14 12 10", "0 12 10", "-1 12 10", "99999 99999 99999", "14 12", "14 12 10 3", "a b c", "1e9 1e9 1e9"],
    "space": ["left-posterior-superior", "right-anterior-superior", "scanner-xyz", "3D-right-handed", "nowhere"],
    "space directions": ["none (0,0.05,0) (0,0,0.05)", "(nan,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,0,0) (0,0,0)", "(1,0) (0,1)", "garbage", "(1e308,0,0) (0,1e308,0) (0,0,1e308)"],
    "space origin": ["(nan,nan,nan)", "(1e308,0,0)", "(0,0)", "x"],
    "endian": ["big", "little", "middle"],
    "encoding": ["raw", "gzip", "bzip2", "hex", "ascii", "zstd"],
}
MHA_HOSTILE = {
    "NDims": ["0", "2", "4", "-1", "x", "1000"],
    "DimSize": ["14 12 10", "0 12 10", "-1 -1 -1", "100000 100000 100000", "14 12", "x y z", "1e12 1 1"],
    "ElementType": ["MET_USHORT", "MET_FLOAT", "MET_UCHAR_ARRAY", "MET_OTHER", "MET_DOUBLE", "MET_LONG_LONG", "garbage"],
    "ElementSpacing": ["0 0 0", "-1 1 1", "nan nan nan", "1e308 1e308 1e308", "1"],
    "Offset": ["nan nan nan", "1e308 0 0", "0 0"],
    "TransformMatrix": ["0 0 0 0 0 0 0 0 0", "nan 0 0 0 1 0 0 0 1", "1 0 0"],
    "CompressedData": ["True", "False", "maybe"],
    "ElementDataFile": ["LOCAL", "missing.raw", "/etc/passwd", "LIST", "slice%03d.raw 0 10 1", ""],
    "BinaryDataByteOrderMSB": ["True", "False"],
}


def _mutate_json(document: Any, rng: random.Random) -> Any:
    """``document`` with one to three of its values replaced, dropped or nested."""
    document = json.loads(json.dumps(document))
    for _ in range(rng.randint(1, 3)):
        paths: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    paths.append((node, key))
                    walk(value)
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    paths.append((node, index))
                    walk(value)

        walk(document)
        if not paths:
            return document
        parent, key = rng.choice(paths)
        action = rng.random()
        if action < 0.45:
            parent[key] = rng.choice(HOSTILE_NUMBERS + [float("nan"), float("inf")])
        elif action < 0.8:
            parent[key] = json.loads(json.dumps(rng.choice(HOSTILE_VALUES)))
        elif action < 0.9 and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = [parent[key]] * rng.randint(2, 50)
    return document


# ------------------------------------------------------------------------------- cases


def _cases(files: dict[str, Path], root: Path) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    cases: list[dict[str, Any]] = []

    def add(family: str, name: str, argv: list[str]) -> None:
        cases.append({"family": family, "name": name, "argv": argv, "directory": str(root / "runs" / f"{len(cases):04d}"), "timeout": 30.0})

    def convert(path: Path, *extra: str) -> list[str]:
        return ["convert", str(path), str(root / "out" / f"{path.name}.ome.zarr"), "--dry-run", *extra]

    # NIfTI: hostile header fields, random bytes in the header, truncation; .nii and .nii.gz
    good = files["nii"].read_bytes()
    for index in range(PER_FAMILY):
        kind = rng.choice(["fields", "fields", "bytes", "truncate"])
        data = {"fields": lambda: _nifti_fields(good, rng), "bytes": lambda: _flip_bytes(good, rng, 352), "truncate": lambda: _truncate(good, rng)}[kind]()
        if rng.random() < 0.3:
            path = root / "nifti" / f"{index:03d}-{kind}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            compressed = gzip.compress(data)
            path.write_bytes(_truncate(compressed, rng) if rng.random() < 0.2 else compressed)
        else:
            path = root / "nifti" / f"{index:03d}-{kind}.nii"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        add("nifti", f"{path.name}", convert(path))

    # NRRD and MetaImage: text headers with hostile fields, random bytes, truncation
    for family, key, separator, hostile in (("nrrd", "nrrd", ": ", NRRD_HOSTILE), ("metaimage", "mha", " = ", MHA_HOSTILE)):
        raw = files[key].read_bytes()
        split = raw.index(b"\n\n") + 2 if family == "nrrd" else raw.index(b"LOCAL\n") + 6
        header, data = raw[:split].decode(), raw[split:]
        for index in range(PER_FAMILY):
            kind = rng.choice(["fields", "fields", "fields", "bytes", "truncate"])
            body = {
                "fields": lambda: _text_header(header, data, rng, separator, hostile),
                "bytes": lambda: _flip_bytes(raw, rng, split),
                "truncate": lambda: _truncate(raw, rng),
            }[kind]()
            path = root / family / f"{index:03d}-{kind}.{key}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            add(family, path.name, convert(path))

    # TIFF: random bytes in the header and IFDs (uncompressed and zlib), truncation
    for index in range(PER_FAMILY):
        base = files[rng.choice(["tif", "tif-zlib"])].read_bytes()
        kind = rng.choice(["bytes", "bytes", "ifd", "truncate"])
        if kind == "ifd":  # the first IFD: offset in bytes 4-8 (little-endian classic TIFF)
            offset = struct.unpack_from("<I", base, 4)[0]
            body = base[:offset] + _flip_bytes(base[offset:], rng, 200)
        elif kind == "bytes":
            body = _flip_bytes(base, rng, 256)
        else:
            body = _truncate(base, rng)
        path = root / "tiff" / f"{index:03d}-{kind}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        add("tiff", path.name, convert(path, "--spacing", "50", "50", "50"))

    # OME-Zarr: the group's metadata (0.5 zarr.json, 0.4 .zattrs) and a level's array metadata
    import shutil

    for index in range(PER_FAMILY):
        version = rng.choice(["0.5", "0.4"])
        target = root / "omezarr" / f"{index:03d}.ome.zarr"
        shutil.copytree(files[f"ome-{version}"], target)
        which = rng.choice(["group", "group", "array"])
        name = ("zarr.json" if version == "0.5" else ".zattrs") if which == "group" else ("0/zarr.json" if version == "0.5" else "0/.zarray")
        metadata = target / name
        if rng.random() < 0.8:
            metadata.write_text(json.dumps(_mutate_json(json.loads(metadata.read_text()), rng)))
        else:
            metadata.write_bytes(_flip_bytes(metadata.read_bytes(), rng) if rng.random() < 0.5 else _truncate(metadata.read_bytes(), rng))
        command = rng.choice([["info", str(target)], convert(target)])
        add("omezarr", f"{target.name}/{name}", command)

    # transform manifests: JSON values replaced, dropped, nested; random bytes
    for index in range(PER_FAMILY):
        target = root / "transforms" / f"{index:03d}"
        shutil.copytree(files["transform"], target)
        manifest = target / "manifest.json"
        if rng.random() < 0.85:
            manifest.write_text(json.dumps(_mutate_json(json.loads(manifest.read_text()), rng)))
        else:
            manifest.write_bytes(_flip_bytes(manifest.read_bytes(), rng))
        out = root / "points-out" / f"{index:03d}.csv"
        add("manifest", f"{index:03d}/manifest.json", ["transform-points", "--transform", str(target), "--points", str(files["points"]), "--out", str(out), "--coordinates", "lps"])
    return cases


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    files = _good_files(root)
    (root / "out").mkdir()
    (root / "points-out").mkdir()
    cases = _cases(files, root)
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "SCALEREG_LOG_DIR": str(root / "logs")}
    subprocess.run([sys.executable, str(HERE / "fuzz_runner.py"), str(root / "cases.json"), str(root / "results.json")], env=env, check=True, timeout=1800)
    return json.loads((root / "results.json").read_text())


def test_the_fuzz_cases_cover_every_family(fuzz_results):
    families = {result["family"] for result in fuzz_results}
    assert families == {"nifti", "nrrd", "metaimage", "tiff", "omezarr", "manifest"}
    assert len(fuzz_results) >= 250
    # the corruptions bite: most cases are refused, some still read (a harmless field)
    refused = sum(1 for result in fuzz_results if result["exit"] == 2)
    assert refused > len(fuzz_results) / 2


def test_every_corrupted_file_ends_in_one_line_or_reads_within_seconds_and_memory(fuzz_results):
    failures = []
    for result in fuzz_results:
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        problems = []
        if result["exit"] not in (0, 2):
            problems.append(f"exit {result['exit']}")
        if result["exit"] == 2 and (len(lines) != 1 or not lines[0].startswith("scalereg: error: ")):
            problems.append(f"{len(lines)} lines on stderr")
        if result["exit"] == 0 and lines:
            problems.append(f"exit 0 with stderr {lines[:2]}")
        if "Traceback" in result["stderr"] + result["stdout"]:
            problems.append("a traceback")
        if result["seconds"] > SECONDS_LIMIT:
            problems.append(f"{result['seconds']} s")
        if result["max_rss_bytes"] > MEMORY_LIMIT:
            problems.append(f"{result['max_rss_bytes'] / 2**20:.0f} MiB")
        if problems:
            failures.append(f"{result['family']} {result['name']} ({' '.join(result['argv'][:1])}): {', '.join(problems)}: {(lines or [''])[-1][:300]}")
    assert not failures, f"{len(failures)} of {len(fuzz_results)} cases:\n" + "\n".join(failures)
