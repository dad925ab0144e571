"""Host checks of csrc/pool.h logic that only the CUDA kernels run, so that the
CPU tests cover it too: each is a small C++ program compiled against pool.h
alone (and c10's macros) and run here."""

import os
import shutil
import subprocess

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("program", ["max_merge_check.cpp"])
def test_shared_header_program(program, tmp_path):
    exe = tmp_path / "check"
    torch_include = os.path.join(os.path.dirname(torch.__file__), "include")
    subprocess.run(["g++", "-std=c++17", "-O1", "-I", CSRC, "-I", torch_include,
                    os.path.join(HERE, "csrc", program), "-o", str(exe)], check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
