"""Builds pool_ext: C++ CPU kernels always, CUDA kernels when a CUDA toolkit is found.

Switches (environment variables):
  POOL_EXT_CUDA=0/1      force the CUDA kernels off / on (default: on when a toolkit is found
                         and torch is a CUDA build)
  POOL_EXT_CUDA_ARCH     compute capabilities to build for, e.g. "9.0" or "8.0;9.0"
                         (default: TORCH_CUDA_ARCH_LIST, else 9.0)
  POOL_EXT_DEBUG=1       build with -O0 -g and device debug info
  POOL_EXT_CPU_ARCH      "native-avx2" (default where the build machine has AVX2 and FMA) or
                         "generic" for a build that runs on any x86-64 CPU
  CUDA_HOME              the toolkit; /usr/local/cuda-13.0 is used when it exists and CUDA_HOME
                         is unset
The decision never depends on torch.cuda.is_available(): build machines have no GPU.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_HOME = "/usr/local/cuda-13.0"

# torch's own toolkit search picks the wrong folder on our build machines, so
# settle CUDA_HOME before torch.utils.cpp_extension reads it at import.
if "CUDA_HOME" not in os.environ and os.path.isdir(DEFAULT_CUDA_HOME):
    os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def _flag(name, default):
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


def _cuda_wanted():
    setting = os.environ.get("POOL_EXT_CUDA")
    has_toolkit = CUDA_HOME is not None and (
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc")
    )
    # A CPU-only torch (torch.version.cuda is None) has no CUDA libraries to link against.
    torch_has_cuda = torch.version.cuda is not None
    if setting is None:
        return bool(has_toolkit) and torch_has_cuda
    if _flag("POOL_EXT_CUDA", "1"):
        if not has_toolkit:
            raise RuntimeError("POOL_EXT_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        if not torch_has_cuda:
            raise RuntimeError(f"POOL_EXT_CUDA=1 but torch {torch.__version__} is a CPU-only build")
    return _flag("POOL_EXT_CUDA", "1")


def _cpu_has_avx2():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _extension():
    debug = _flag("POOL_EXT_DEBUG", "0")
    with_cuda = _cuda_wanted()
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for runs its tasks through OpenMP pragmas compiled into the
    # caller: without -fopenmp the CPU kernels would run on one thread.
    # (py_limited_api below makes torch define Py_LIMITED_API as its oldest Python, 3.10.)
    cxx += ["-fopenmp"]
    cpu_arch = os.environ.get("POOL_EXT_CPU_ARCH", "native-avx2" if _cpu_has_avx2() else "generic")
    if cpu_arch == "native-avx2":
        # CPU_CAPABILITY selects ATen's AVX2 at::vec::Vectorized, as torch's own AVX2 kernels do.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    config = {"cuda": with_cuda, "debug": debug, "cpu_arch": cpu_arch}
    link = ["-fopenmp"]
    if sys.platform.startswith("linux"):
        # A toolchain that links libstdc++ (or any library) statically puts a
        # private copy of its iostreams into _C.so, half of whose symbols then
        # bind to the process's shared libstdc++ at load time: formatting a
        # number into an error message lost the rest of the message here and
        # crashed the GPU machine's builds. Hidden, the copy stays whole; with
        # no static library linked (the usual case) this changes nothing.
        link += ["-Wl,--exclude-libs,ALL"]
    kwargs = {"extra_compile_args": {"cxx": cxx}, "extra_link_args": link, "py_limited_api": True}
    if with_cuda:
        arch = os.environ.get("POOL_EXT_CUDA_ARCH") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0"
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        sources += rel("csrc/cuda/*.cu")
        config.update(cuda_home=CUDA_HOME, cuda_arch=arch)
        ext = CUDAExtension("pool_ext._C", sources, **kwargs)
    else:
        ext = CppExtension("pool_ext._C", sources, **kwargs)
    print("pool_ext build configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    return ext


setup(
    name="pool_ext",
    version="0.1.0",
    description="Max, average and variable pooling as PyTorch custom operators (CPU and CUDA)",
    packages=find_packages(include=["pool_ext", "pool_ext.*"]),
    ext_modules=[_extension()],
    install_requires=["torch"],
    extras_require={"test": ["pytest"], "examples": ["tqdm", "mlxtend", "matplotlib"]},
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    python_requires=">=3.10",
)
