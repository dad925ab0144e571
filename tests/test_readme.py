"""The README's API example runs as written, and its comments' shapes hold."""

import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def api_example():
    """The first python block of the README's API section."""
    text = README.read_text()
    section = text[text.index("\n## API\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")  # (its last line exports to ONNX)
    monkeypatch.chdir(tmp_path)  # (where it writes net.onnx)
    torch.manual_seed(0)
    names = {}
    exec(compile(api_example(), "README.md (API)", "exec"), names)
    assert names["y"].shape == (8, 64, 56, 56) and names["idx"].dtype == torch.int64
    assert names["z"].shape == (8, 64, 56, 56)  # "same": ceil(112 / 2)
    assert names["g"].shape == (8, 64, 1, 1)
    assert names["m"].shape == (4, 256, 1)
    assert names["v"].shape == (2, 3, 4, 4)
    assert names["spp"](torch.randn(2, 5, 9, 7)).shape == (2, 5 * 21)
    assert type(names["net"][1]).__module__ == "pool_ext.nn"
    per_sample = names["per_sample"]
    assert all(g.shape == (8, *p.shape) for g, p in zip(per_sample.values(), names["params"].values()))
    assert (tmp_path / "net.onnx").stat().st_size > 0
