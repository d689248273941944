"""The MNIST family as in-memory tensors: find or download the IDX files, check them, load once."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import DataError, DiskError
from .files import cache_root, defaults_path, digest_ok, save_verified

if TYPE_CHECKING:
    from .config import DataConfig

# the folder names of torchvision's dataset classes, which also give checksums, mirrors and classes
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
ALL_FILES = FILES["train"] + FILES["test"]
# md5 of the decompressed files, for copies recompressed by a distribution (Debian's Fashion-MNIST)
RAW_MD5 = {"fashion-mnist": {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}}
# where distributions install these data sets (Debian: apt-get install dataset-fashion-mnist)
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}


def torchvision_class(name: str):
    """torchvision's dataset class for a name: file names, .gz checksums, mirrors, classes."""
    from torchvision import datasets  # imported only when needed: it takes a second

    return getattr(datasets, FOLDERS[name])


def default_root() -> Path:
    """Where downloads and the parsed-tensor cache go: $XDG_CACHE_HOME/mnistlab or ~/.cache/mnistlab."""
    return cache_root()


@dataclass
class Splits:
    """Normalised float images [N, C, H, W] and int64 labels for each split, plus what describes them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float
    std: float
    num_classes: int
    class_names: list[str]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return {"train": (self.train_x, self.train_y), "val": (self.val_x, self.val_y),
                "test": (self.test_x, self.test_y)}[name]


# ---------------------------------------------------------------- IDX files


def memory_limit() -> int:
    """The largest IDX file inflated into memory: half of this machine's RAM."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def inflate(path: Path, disk: bytes) -> bytes:
    """Decompress a gzipped IDX file no further than its header's claim (plus one byte to notice more).

    A small file that would inflate to gigabytes is refused before it is inflated.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(disk)) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or not 1 <= head[3] <= 4:
                return head + f.read(64)  # not IDX: parse_idx names the problem
            head += f.read(4 * head[3])
            if len(head) < 4 + 4 * head[3]:
                return head
            claimed = len(head) + math.prod(struct.unpack(f">{head[3]}I", head[4:]))
            if claimed > memory_limit():
                raise DataError(
                    f"{path}: its header announces {claimed / 1e9:.1f} GB of data, more than half "
                    f"of this machine's memory ({memory_limit() / 1e9:.1f} GB can be loaded); it "
                    "is not an MNIST-family file, or it needs a machine with more memory.")
            return head + f.read(claimed - len(head) + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: is not a complete gzip file ({e}); it is probably truncated or corrupt. "
            "Delete it and download it again, or replace it with a good copy.") from None


def _read_bytes(path: Path) -> tuple[bytes, bytes]:
    """Return (bytes on disk, decompressed bytes)."""
    try:
        disk = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}).") from None
    if not path.name.endswith(".gz"):
        return disk, disk
    return disk, inflate(path, disk)


def parse_idx(path: Path, raw: bytes, ndim: int) -> torch.Tensor:
    """Parse IDX bytes of unsigned bytes with the expected number of dimensions."""
    fix = "Delete it and download it again, or replace it with a good copy."
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: is not an IDX file (bad magic number). {fix}")
    if raw[2] != 0x08:
        raise DataError(f"{path}: holds IDX data of type 0x{raw[2]:02x}; only unsigned bytes "
                        f"(0x08), as in MNIST, are supported. {fix}")
    if raw[3] != ndim:
        kind = "images (3 dimensions)" if ndim == 3 else "labels (1 dimension)"
        raise DataError(f"{path}: has {raw[3]} dimensions where {kind} were expected; "
                        f"is it the right file? {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: is truncated inside its header. {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = 1
    for d in dims:
        size *= d
    if size == 0:
        raise DataError(f"{path}: its header announces no values ({' x '.join(map(str, dims))}: "
                        f"a dimension is 0), so it holds no image or label. {fix}")
    if len(raw) != header + size:
        what = "truncated" if len(raw) < header + size else "longer than its header says"
        raise DataError(f"{path}: is {what}: its header announces {size} values "
                        f"({' x '.join(map(str, dims))}) but it holds {len(raw) - header}. {fix}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _candidate_dirs(cfg: DataConfig) -> list[Path]:
    if cfg.name == "idx":
        return [Path(cfg.root).expanduser()]
    folder = FOLDERS[cfg.name]
    if cfg.root:
        root = Path(cfg.root).expanduser()
        return [root, root / folder / "raw", root / cfg.name]
    return [default_root() / folder / "raw", *SYSTEM_DIRS.get(cfg.name, [])]


def _download_dir(cfg: DataConfig) -> Path:
    root = Path(cfg.root).expanduser() if cfg.root else default_root()
    return root / FOLDERS[cfg.name] / "raw"


def locate(cfg: DataConfig, stems: tuple[str, ...] = ALL_FILES) -> Path:
    """The directory holding the IDX files (all four, or the stems given), downloading them if
    allowed and needed."""
    candidates = _candidate_dirs(cfg)
    for d in candidates:
        if all(_find_file(d, stem) for stem in ALL_FILES):
            return d
    for d in candidates:  # e.g. only the test files, for eval on the test split
        if all(_find_file(d, stem) for stem in stems):
            return d
    if cfg.name != "idx" and cfg.download:
        return download(cfg)
    raise DataError(_missing_message(cfg, candidates))


def _missing_message(cfg: DataConfig, candidates: list[Path], reason: str = "") -> str:
    looked = ", ".join(str(d) for d in candidates)
    partial = [d for d in candidates if any(_find_file(d, s) for s in ALL_FILES)]
    missing = ""
    if partial:
        lacking = [s for s in ALL_FILES if not _find_file(partial[0], s)]
        missing = f" {partial[0]} holds only some of them; it lacks {', '.join(lacking)}."
    files = ", ".join(ALL_FILES)
    msg = (f"The {cfg.name} data set was not found: looked in {looked} for the four files "
           f"{files} (each may end in .gz).{missing}{reason} ")
    if cfg.name == "idx":
        return msg + "Put the four files in data.root, or point data.root=DIR at the directory that holds them."
    target = _download_dir(cfg)
    msg += (f"Put the four files in {target} (or any directory and pass data.root=DIR)")
    installed = next((d for d in SYSTEM_DIRS["fashion-mnist"]
                      if all(_find_file(d, stem) for stem in ALL_FILES)), None)
    if cfg.name == "fashion-mnist":
        msg += ", or install Debian's copy with 'apt-get install dataset-fashion-mnist', which is found without configuration"
    if not cfg.download:
        msg += ", or allow the download with data.download=true"
    msg += "."
    if cfg.name != "fashion-mnist":
        default = (f"or make it your default with 'data: {{name: fashion-mnist}}' in "
                   f"{defaults_path()}")
        if installed is not None:
            msg += (" Offline, Fashion-MNIST works out of the box: it is installed here "
                    f"({installed}); add data.name=fashion-mnist, {default}.")
        else:
            msg += (" Offline, Fashion-MNIST works out of the box: 'apt-get install "
                    f"dataset-fashion-mnist', then data.name=fashion-mnist, {default}.")
    return msg


def download(cfg: DataConfig) -> Path:
    """Fetch the four .gz files from the first mirror that serves them, verified, atomically."""
    cls = torchvision_class(cfg.name)
    target = _download_dir(cfg)
    target.mkdir(parents=True, exist_ok=True)
    mirrors = ([cfg.mirror.rstrip("/") + "/"] if cfg.mirror else []) + list(cls.mirrors)
    for filename, _ in cls.resources:
        if (target / filename).is_file():
            continue
        errors = []
        for mirror in mirrors:
            try:
                _fetch(mirror + filename, target / filename, cfg.name)
                break
            except (OSError, urllib.error.URLError, ValueError) as e:
                errors.append(f"{mirror + filename}: {getattr(e, 'reason', e)}")
        else:
            reason = " Download failed (" + "; ".join(errors) + ")."
            raise DataError(_missing_message(cfg, _candidate_dirs(cfg), reason))
    return target


def _fetch(url: str, dest: Path, name: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(response, f)
            disk = Path(tmp).read_bytes()
            try:
                raw = inflate(dest, disk)
            except DataError:
                raise ValueError("the file served is not a complete gzip file of IDX data") from None
            if not _checksum_ok(name, dest.name, disk, raw, strict=True):
                raise ValueError("checksum mismatch: the file served is not the published one")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _checksum_ok(name: str, filename: str, disk: bytes, raw: bytes, strict: bool) -> bool:
    """Does the file match a published checksum? Without one, strict (downloads) says no."""
    stem = filename.removesuffix(".gz")
    gz_md5 = dict(torchvision_class(name).resources).get(stem + ".gz")
    if filename.endswith(".gz") and hashlib.md5(disk).hexdigest() == gz_md5:
        return True
    known = RAW_MD5.get(name, {}).get(stem)
    if known:
        return hashlib.md5(raw).hexdigest() == known
    # a local copy recompressed by someone has no published checksum: its structure is still checked
    return not strict


def _verify(name: str, path: Path, disk: bytes, raw: bytes) -> None:
    if not _checksum_ok(name, path.name, disk, raw, strict=False):
        raise DataError(
            f"{path}: its content does not match the published {name} file (md5 differs). "
            "Delete it and download it again, or, if it is your own MNIST-format data, "
            "use data.name=idx with data.root pointing at its directory.")


def read_split(name: str, directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, H, W] and int64 labels [N] of one split, checked."""
    out = []
    for stem, ndim in zip(FILES[split], (3, 1)):
        path = _find_file(directory, stem)
        disk, raw = _read_bytes(path)
        if name != "idx":
            _verify(name, path, disk, raw)
        out.append(parse_idx(path, raw, ndim))
    images, labels = out
    if len(images) != len(labels):
        raise DataError(f"{directory}: the {split} split has {len(images)} images but "
                        f"{len(labels)} labels; the two files do not belong together.")
    return images, labels.long()


def read_all(name: str, directory: Path) -> dict:
    """Both splits as uint8 tensors and the class names, through a cache of the parsed files.

    Parsing and checking the files takes about a second; the cache makes it a few milliseconds.
    It is keyed on the files' paths, sizes and modification times, so a changed file is read anew.
    """
    files = [_find_file(directory, stem) for stem in ALL_FILES]
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    if not _READ:  # an ordinary process reads once; only a warm one (prepare) keeps what it read
        return _read_all(name, directory, stamp)
    key = json.dumps([name, stamp])
    if key not in _READ[0]:  # not read before by this warm process, which reads once for its trials
        _READ[0].clear()  # one data set kept: the one a sweep's trials read
        _READ[0][key] = _read_all(name, directory, stamp)
    return _READ[0][key]


# in a warm process (after prepare): [{key: entry}]; callers slice and copy the tensors of an
# entry, never change them
_READ: list[dict[str, dict]] = []


def prepare(cfg: DataConfig, val_split: float, seed: int) -> None:
    """Load the data as a run of these settings will, when its files are on disk (never
    downloads), and keep it: a warm sweep process does this once for the trials it forks, which
    then find their data ready. An ordinary process never calls it."""
    if not _READ:
        _READ.append({})
    for d in _candidate_dirs(cfg):
        if all(_find_file(d, stem) for stem in ALL_FILES):
            key = _prepared_key(read_all(cfg.name, d), cfg, val_split, seed)
            if key not in _PREPARED:
                while len(_PREPARED) >= 4:  # e.g. the seeds of a sweep, at about 0.2 GB each
                    _PREPARED.pop(next(iter(_PREPARED)))
                _PREPARED[key] = load_data(cfg, val_split, seed)
            return


_PREPARED: dict[str, Splits] = {}


def _prepared_key(entry: dict, cfg: DataConfig, val_split: float, seed: int) -> str:
    return json.dumps([entry["stamp"], cfg.name, cfg.train_samples, cfg.test_samples, val_split,
                       seed])


def _read_all(name: str, directory: Path, stamp: list) -> dict:
    cache = default_root() / "cache" / (
        f"{name}-{hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]}.pt")
    try:
        entry = torch.load(cache, weights_only=True)
        if entry.get("stamp") == stamp and "digest" in entry and digest_ok(entry) and \
                _cache_ok(entry):
            return entry
    except Exception:  # a missing, stale or damaged cache is simply rebuilt
        pass
    train_x, train_y = read_split(name, directory, "train")
    test_x, test_y = read_split(name, directory, "test")
    if name == "idx":
        class_names = [str(i) for i in range(int(max(train_y.max(), test_y.max())) + 1)]
    else:
        class_names = [c.split(" - ")[0] for c in torchvision_class(name).classes]
    entry = {"stamp": stamp, "train": (train_x, train_y), "test": (test_x, test_y),
             "class_names": class_names}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_verified(cache, entry)  # the digest inside lets a damaged cache be noticed and rebuilt
    except (OSError, DiskError):  # a read-only or full disk only costs the speed-up
        pass
    return entry


def _cache_ok(entry: dict) -> bool:
    """Does a cache entry hold what read_split returns for both splits, and the class names?"""
    for split in ("train", "test"):
        pair = entry.get(split)
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(t, torch.Tensor) for t in pair)):
            return False
        images, labels = pair
        if images.dtype != torch.uint8 or images.dim() != 3 or labels.dtype != torch.int64 \
                or labels.shape != images.shape[:1] or not len(images):
            return False
    names = entry.get("class_names")
    return isinstance(names, list) and bool(names) and all(isinstance(c, str) for c in names)


# ---------------------------------------------------------------- splits in memory


def val_count(n: int, val_split: float, source: str) -> int:
    """How many of n samples go to validation; refused when no training sample would be left."""
    n_val = int(round(n * val_split))
    if n - n_val < 1:
        raise DataError(f"{source}: train.val_split={val_split:g} of {n} samples leaves no "
                        f"training sample; lower train.val_split (or use more samples).")
    return n_val


def load_data(cfg: DataConfig, val_split: float, seed: int,
              stats: tuple[float, float] | None = None, test_only: bool = False) -> Splits:
    """Load train/val/test into memory, normalised once; stats=(mean, std) reuses a model's own.

    test_only (with stats): the test split alone, from a directory that may hold only the two
    t10k files; the train and val splits are empty."""
    if test_only and stats is not None:
        return _test_split(cfg, stats)
    directory = locate(cfg)
    entry = read_all(cfg.name, directory)
    if _PREPARED and stats is None:  # in a trial forked from a warm sweep process
        ready = _PREPARED.get(_prepared_key(entry, cfg, val_split, seed))
        if ready is not None:
            return dataclasses.replace(ready)
    (train_u8, train_y), (test_u8, test_y) = entry["train"], entry["test"]
    class_names = entry["class_names"]
    if cfg.train_samples:
        train_u8, train_y = train_u8[: cfg.train_samples], train_y[: cfg.train_samples]
    if cfg.test_samples:
        test_u8, test_y = test_u8[: cfg.test_samples], test_y[: cfg.test_samples]
    if len(train_u8) < 2 or len(test_u8) < 1:
        raise DataError(f"{directory}: the data set is too small to train on "
                        f"({len(train_u8)} training and {len(test_u8)} test images).")
    if train_u8.shape[1:] != test_u8.shape[1:]:
        raise DataError(f"{directory}: training images are {tuple(train_u8.shape[1:])} but test "
                        f"images are {tuple(test_u8.shape[1:])}; they must have the same size.")
    n_val = val_count(len(train_u8), val_split, str(directory))
    perm = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    # each split's images are picked before they are made float, and the training images are
    # made float once: less memory to allocate and touch, which is most of the time taken here
    scaled = train_u8[train_idx].unsqueeze(1).float().div_(255)
    if stats is None:  # from the training split only: the validation images stay unseen
        stats = (scaled.mean().item(), max(scaled.std().item(), 1e-6))
    mean, std = stats

    def normalise(u8: torch.Tensor) -> torch.Tensor:
        return u8.unsqueeze(1).float().div_(255).sub_(mean).div_(std)

    return Splits(scaled.sub_(mean).div_(std), train_y[train_idx], normalise(train_u8[val_idx]),
                  train_y[val_idx], normalise(test_u8), test_y, mean, std, len(class_names),
                  class_names, str(directory))


def _test_split(cfg: DataConfig, stats: tuple[float, float]) -> Splits:
    """The test split alone, normalised with a model's own statistics."""
    directory = locate(cfg, FILES["test"])
    if all(_find_file(directory, stem) for stem in ALL_FILES):  # through the cache of all four
        entry = read_all(cfg.name, directory)
        (test_u8, test_y), class_names = entry["test"], entry["class_names"]
    else:
        test_u8, test_y = read_split(cfg.name, directory, "test")
        class_names = ([str(i) for i in range(int(test_y.max()) + 1)] if cfg.name == "idx" else
                       [c.split(" - ")[0] for c in torchvision_class(cfg.name).classes])
    if cfg.test_samples:
        test_u8, test_y = test_u8[: cfg.test_samples], test_y[: cfg.test_samples]
    if len(test_u8) < 1:
        raise DataError(f"{directory}: the test split holds no image.")
    mean, std = stats
    test_x = test_u8.unsqueeze(1).float().div_(255).sub_(mean).div_(std)
    empty_x, empty_y = test_x[:0], test_y[:0]
    return Splits(empty_x, empty_y, empty_x, empty_y, test_x, test_y, mean, std, len(class_names),
                  class_names, str(directory))
