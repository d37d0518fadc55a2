"""Build deepcuts-fast, with its C++ (and, where torch has CUDA, CUDA) extensions when sources exist.

The package imports and works with no extension built; set DEEPCUTS_NO_EXTENSIONS=1 to skip them.
"""
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def extensions():
    if os.environ.get("DEEPCUTS_NO_EXTENSIONS") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return [], {}
    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    cuda_dir = ROOT / "csrc" / "cuda"
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in [*cuda_dir.glob("*.cu"), *cuda_dir.glob("*.cpp")])
    exts = []
    include = [str(ROOT / "csrc")]
    if cpu_sources:
        exts.append(CppExtension("deepcuts_fast._C", cpu_sources, include_dirs=include,
                                 extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno"], extra_link_args=["-fopenmp"]))
    if cuda_sources and torch.version.cuda is not None:
        exts.append(CUDAExtension("deepcuts_fast._cuda", cuda_sources, include_dirs=include,
                                  extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]}))
    if not exts:
        return [], {}
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
