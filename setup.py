"""Build rnnkit._C, the compiled kernels, against the torch that is installed.

Install with ``pip install --no-build-isolation -e .`` so the extension is built against the torch
that will run it. Environment switches (see README.md, "Building"):

  RNNKIT_CUDA=0|1        0 skips the CUDA kernels; 1 requires them (the build fails if it cannot);
                         unset builds them when a CUDA toolkit and a CUDA build of torch are found
  RNNKIT_CUDA_ARCHS      e.g. "9.0;8.0" (default: the visible GPU's, else Hopper and Ampere)
  RNNKIT_CPU_CAPABILITY  default, avx2 or avx512: the SIMD instructions of the CPU kernels
                         (default: what torch detects on the building machine)
  RNNKIT_DEBUG=1         assertions on, -O0 -g
  RNNKIT_SANITIZE=...    address and/or undefined (comma-separated): a sanitizer build of the
                         CPU kernels, for tools/sanitize.sh
  MAX_JOBS               parallel compile jobs, as for any torch extension
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def fail(message: str) -> None:
    sys.exit(f"rnnkit build: {message}")


def find_cuda_home() -> str | None:
    """CUDA_HOME if set, else the toolkit in CUDA's standard folder (torch's own guess from the
    nvcc on PATH can be wrong); None when there is no toolkit."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and Path(candidate, "bin", "nvcc").exists():
            return candidate
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: settle it first.
cuda_mode = os.environ.get("RNNKIT_CUDA", "").strip()
if cuda_mode not in ("", "0", "1"):
    fail(f"RNNKIT_CUDA must be 0, 1 or unset, got {cuda_mode!r}")
cuda_home = find_cuda_home() if cuda_mode != "0" else None
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    fail("torch is not installed. Install it first (pip install torch), then build rnnkit with "
         "pip install --no-build-isolation -e .")


def nvidia_wheel_includes() -> list[str]:
    """Include folders of the nvidia-* wheels that CUDA builds of torch install (cusparse.h,
    cublas_v2.h, ...): torch's CUDA headers include them, and they are not in every toolkit."""
    found = []
    for entry in sys.path:
        for inc in sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include"))):
            if os.path.isdir(inc):
                found.append(inc)
    return found


def cuda_archs() -> list[str]:
    archs = os.environ.get("RNNKIT_CUDA_ARCHS", "").replace(",", ";").split(";")
    archs = [a.strip() for a in archs if a.strip()]
    if archs:
        return archs
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return [f"{major}.{minor}"]
    return ["9.0", "8.0"]


def want_cuda() -> bool:
    problems = []
    if cuda_home is None:
        problems.append("no CUDA toolkit found (set CUDA_HOME to the folder that holds bin/nvcc)")
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)")
    if cuda_mode == "1" and problems:
        fail("RNNKIT_CUDA=1 asks for the CUDA kernels, but " + "; ".join(problems) + ".")
    return cuda_mode != "0" and not problems and bool(glob.glob(str(ROOT / "csrc/cuda/*.cu")))


debug = os.environ.get("RNNKIT_DEBUG", "") == "1"
sanitize = [s for s in os.environ.get("RNNKIT_SANITIZE", "").split(",") if s]
for s in sanitize:
    if s not in ("address", "undefined"):
        fail(f"RNNKIT_SANITIZE takes 'address' and/or 'undefined', got {s!r}")

# The CPU kernels use ATen's at::vec::Vectorized, whose instruction set is chosen at compile time.
SIMD_FLAGS = {
    "default": [],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
               "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}
cpu_capability = os.environ.get("RNNKIT_CPU_CAPABILITY", "").lower()
if not cpu_capability:
    detected = torch.backends.cpu.get_cpu_capability().lower()
    cpu_capability = detected if detected in SIMD_FLAGS else "default"
if cpu_capability not in SIMD_FLAGS:
    fail(f"RNNKIT_CPU_CAPABILITY must be one of {', '.join(SIMD_FLAGS)}, got {cpu_capability!r}")

with_cuda = want_cuda()
# rnnkit's C++ is C++20 (templated lambdas, requires-expressions). torch's extension builder adds
# its own standard only where none is given, and before torch 2.12 that was C++17.
STD = ["-std=c++20"]
cxx = STD + ["-fopenmp"] + SIMD_FLAGS[cpu_capability] + (["-O0", "-g", "-UNDEBUG"] if debug or sanitize else ["-O3", "-DNDEBUG"])
if sanitize:
    cxx += [f"-fsanitize={','.join(sanitize)}", "-fno-omit-frame-pointer"]
    if "undefined" in sanitize:
        cxx += ["-fno-sanitize-recover=undefined"]
link = ["-fopenmp"] + ([f"-fsanitize={','.join(sanitize)}"] if sanitize else [])
macros = [
    ("RNNKIT_TORCH_VERSION", f'"{torch.__version__}"'),
    ("RNNKIT_CXX_FLAGS", '"' + " ".join(cxx) + '"'),
    ("RNNKIT_CPU_CAPABILITY", f'"{cpu_capability}"'),
]
sources = ["csrc/rnnkit.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))

if with_cuda:
    archs = cuda_archs()
    macros += [("RNNKIT_WITH_CUDA", None), ("RNNKIT_CUDA_ARCHS", '"' + ";".join(archs) + '"')]
    gencode = []
    for a in archs:
        num = a.replace(".", "")
        gencode += [f"-gencode=arch=compute_{num},code=sm_{num}"]
    nvcc = STD + ["--expt-relaxed-constexpr", "-lineinfo"] + gencode
    nvcc += ["-O0", "-G"] if debug else ["-O3", "-DNDEBUG"]
    ext = CUDAExtension(
        "rnnkit._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=nvidia_wheel_includes(),
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=link,
    )
    # torch's TORCH_CUDA_ARCH_LIST would add its own -gencode flags; ours are explicit.
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
else:
    ext = CppExtension(
        "rnnkit._C",
        sources,
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )

print(f"rnnkit build: CPU kernels for {cpu_capability}, CUDA kernels {'on' if with_cuda else 'off'}"
      f"{' (' + ';'.join(cuda_archs()) + ')' if with_cuda else ''}, debug {'on' if debug else 'off'}"
      f"{', sanitizers ' + ','.join(sanitize) if sanitize else ''}", file=sys.stderr)



def own_cxx_runtime(library: str) -> bool | None:
    """Whether the built library defines the C++ runtime's exception entry points itself (a
    compiler that links libstdc++ statically). Then an error thrown by the kernels unwinds through
    torch's own runtime and crashes the process instead of raising. None when nm is missing."""
    try:
        symbols = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True,
                                 text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return any(line.split()[-1] in ("__cxa_throw", "__gxx_personality_v0")
               for line in symbols.splitlines() if line.strip())


class Build(BuildExtension):
    def build_extension(self, extension):
        super().build_extension(extension)
        library = self.get_ext_fullpath(extension.name)
        verdict = own_cxx_runtime(library)
        if verdict is None:
            print("rnnkit build: nm not found, so the C++ runtime linkage was not checked",
                  file=sys.stderr)
        elif verdict:
            os.remove(library)
            fail(f"the compiler ({os.environ.get('CXX', 'c++')}) linked its own copy of the C++ "
                 "runtime (libstdc++) into rnnkit._C, so every error the kernels raise would crash "
                 "Python instead. Build with a compiler that links libstdc++ dynamically, as torch's "
                 "does, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ (and for CUDA the same gcc as nvcc's "
                 "host compiler).")


setup(ext_modules=[ext], cmdclass={"build_ext": Build.with_options(use_ninja=True)})
