"""Device strings, and the defaults a user of each device expects.

A device is "auto" (the first GPU this build can use, else the CPU), "cpu", "gpu" (any
GPU backend), or a backend: "cuda", "metal", "vulkan", "sycl", "hip", ... (`BACKENDS`; ggml's
own registry name, e.g. "mtl" or "rocm", is accepted as well); optionally with an index
among that backend's devices ("cuda:1" is the second CUDA GPU, "gpu:1" the second GPU of
any backend). The engine is handed ggml's form, "<registry name>:<index>" ("mtl:0").

`resolve_defaults` turns what the user asked for into what the engine gets:

- the device, checked against the backends compiled into this build and the devices
  they see, with an error that says what to do (install a GPU build, check the driver,
  pick an index that exists);
- CPU threads: the physical cores available to this process (hyper-threads slow
  llama.cpp's matrix kernels down rather than up);
- batch size (sequence slots decoded together): 4 on the CPU, 32 on a GPU, where one
  decode step reads the weights once for all sequences at little extra cost;
- flash attention: on for GPUs (llama.cpp keeps it off where the backend lacks it),
  off on the CPU, where it is not faster for these short contexts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ..errors import DeviceError

class Backend(NamedTuple):
    """A GPU backend of ggml: its registry name (what ``ggml_backend_reg_name`` returns,
    which the engine matches, in any case), the name users know, and the llama-cpp-python
    build flag that compiles it in ("" where the build has it by default)."""

    registry: str
    label: str
    build_flag: str


# The one table from the word a user writes to ggml's backend. Registry names as llama.cpp
# 0c1e57098 (llama-cpp-python 0.3.36) registers them, each its ggml_backend_<x>_reg's
# get_name: ggml-cuda.h's GGML_CUDA_NAME ("CUDA"; "ROCm" in a HIP build, "MUSA" in a MUSA
# build), ggml-metal.cpp's GGML_METAL_NAME "MTL", ggml-vulkan.h's "Vulkan", ggml-sycl.h's
# "SYCL", ggml-opencl.cpp's "OpenCL", ggml-webgpu.h's "WebGPU", ggml-cann.cpp's "CANN".
BACKENDS: Dict[str, Backend] = {
    "cuda": Backend("CUDA", "CUDA", "-DGGML_CUDA=on"),
    "metal": Backend("MTL", "Metal", ""),
    "vulkan": Backend("Vulkan", "Vulkan", "-DGGML_VULKAN=on"),
    "hip": Backend("ROCm", "HIP (ROCm)", "-DGGML_HIP=on"),
    "sycl": Backend("SYCL", "SYCL", "-DGGML_SYCL=on"),
    "musa": Backend("MUSA", "MUSA", "-DGGML_MUSA=on"),
    "opencl": Backend("OpenCL", "OpenCL", "-DGGML_OPENCL=on"),
    "webgpu": Backend("WebGPU", "WebGPU", "-DGGML_WEBGPU=on"),
    "cann": Backend("CANN", "CANN (Ascend)", "-DGGML_CANN=on"),
}
DEVICES = ("auto", "cpu", "gpu") + tuple(BACKENDS)
# ggml's own names are accepted too ("mtl:0", what model.device shows as "MTL0"; "rocm")
_ALIASES = {b.registry.lower(): kind for kind, b in BACKENDS.items() if b.registry.lower() != kind}
_KIND_OF_BACKEND = {b.registry: kind for kind, b in BACKENDS.items()}

CPU_BATCH_SIZE = 4
GPU_BATCH_SIZE = 32
# Live conversations (`Model(sessions=)`) kept at once. Each owns an engine sequence beside
# the batch_size ones. On a CPU a conversation speaking in real time takes a large share of
# every decode step, so more than a few would only hold memory; on a GPU a decode step costs
# about the same for 1 or 48 sequences, and each session costs only its KV cache.
CPU_SESSIONS = 4
GPU_SESSIONS = 16


class DeviceDefaults(NamedTuple):
    """What the engine is given. ``device`` is "cpu" or "<ggml backend>:<index>" in
    lower case ("cuda:0", "mtl:0"), the form ``pylfm._core.Engine`` takes."""

    device: str
    n_threads: int
    batch_size: int
    flash_attn: bool

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


def parse_device(device: Any) -> Tuple[str, Optional[int]]:
    """``"CUDA:1"`` -> ``("cuda", 1)``, ``"auto"`` -> ``("auto", None)``; DeviceError
    for anything that is not a device string."""
    if not isinstance(device, str):
        raise DeviceError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    kind, colon, index = device.strip().lower().partition(":")
    kind = _ALIASES.get(kind, kind)
    if kind not in DEVICES or (colon and not index.isdigit()) or (index and kind in ("auto", "cpu")):
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} "
                          "(a GPU kind optionally with ':N', e.g. 'cuda:1')")
    return kind, int(index) if index else None


def check_device(device: Any) -> str:
    """The normalized device string ("CUDA:1 " -> "cuda:1", "MTL" -> "metal"); DeviceError
    if malformed."""
    kind, index = parse_device(device)
    return kind if index is None else f"{kind}:{index}"


def gpu_devices(info: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The GPUs this build sees, in ggml's order, each system_info's device dict plus
    ``kind`` ("cuda", "metal", ...; the backend name if pylfm has no name for it),
    ``index`` (among devices of that kind) and ``engine`` (the engine's device string)."""
    info = info if info is not None else system_info()
    out: List[Dict[str, Any]] = []
    seen: Dict[str, int] = {}
    for d in info.get("devices", []):
        if d.get("type") != "gpu":
            continue
        backend = str(d.get("backend", ""))
        i = seen.get(backend, 0)
        seen[backend] = i + 1
        out.append(dict(d, kind=_KIND_OF_BACKEND.get(backend, backend.lower()), index=i,
                        engine=f"{backend.lower()}:{i}"))
    return out


def select_device(device: Any = "auto", info: Optional[Dict[str, Any]] = None) -> str:
    """The engine device string for what the user asked for: "cpu" or e.g. "cuda:1".

    This is the only place a user's word becomes the engine's: "metal" is ggml's "MTL",
    "hip" its "ROCm" (`BACKENDS`). Raises DeviceError when the build lacks that backend, when the backend sees no
    device (no driver), or when the index does not exist; the message says what to do."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    info = info if info is not None else system_info()
    gpus = gpu_devices(info)
    if kind == "auto":
        return gpus[0]["engine"] if gpus else "cpu"
    candidates = gpus if kind == "gpu" else [g for g in gpus if g["kind"] == kind]
    want = index or 0
    if want < len(candidates):
        return candidates[want]["engine"]
    raise DeviceError(_unavailable(device.strip(), kind, index, candidates, info))


SYSFS_CPU = Path("/sys/devices/system/cpu")  # where Linux describes the CPU topology


def physical_cores(sysfs: Optional[Path] = None) -> int:
    """Physical cores this process may run on: logical CPUs of its affinity mask that
    share a core count once (``sysfs``: `SYSFS_CPU`). Falls back to the logical count
    where that is unknown."""
    sysfs = SYSFS_CPU if sysfs is None else sysfs
    logical = available_cpus_set()
    if sys.platform == "darwin":
        return _sysctl_int("hw.perflevel0.physicalcpu") or _sysctl_int("hw.physicalcpu") or len(logical)
    cores = set()
    for cpu in logical:
        topo = sysfs / f"cpu{cpu}" / "topology"
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topo / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return len(logical)  # no topology (containers without sysfs, other systems)
    return max(1, len(cores))


def available_cpus() -> int:
    """Logical CPUs this process may run on."""
    return len(available_cpus_set())


def available_cpus_set() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(max(1, os.cpu_count() or 1)))


def resolve_defaults(device: Any = "auto", n_threads: Optional[int] = None, batch_size: Optional[int] = None,
                     flash_attn: Optional[bool] = None, *, info: Optional[Dict[str, Any]] = None) -> DeviceDefaults:
    """Checks the user's device and settings and fills in the ones left None (or
    ``n_threads=0``) with what suits the device: ``(device, n_threads, batch_size,
    flash_attn)``, see the module docstring. ``info`` is `pylfm.system_info()` (read from
    the build when omitted). DeviceError for the device, ValueError for the numbers."""
    if n_threads == 0:  # 0 has always meant "the default" (as in llama.cpp)
        n_threads = None
    for name, value in (("n_threads", n_threads), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if flash_attn is not None and not isinstance(flash_attn, bool):
        raise ValueError(f"flash_attn must be True, False or None (the device's default), got {flash_attn!r}")
    engine_device = select_device(device, info)
    gpu = engine_device != "cpu"
    return DeviceDefaults(
        device=engine_device,
        n_threads=n_threads or physical_cores(),
        batch_size=batch_size or (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE),
        flash_attn=flash_attn if flash_attn is not None else gpu,
    )


def explain_import_error(error: ImportError) -> ImportError:
    """The error to show when llama.cpp's libraries cannot load: a CUDA build on a machine
    without the NVIDIA driver or CUDA runtime gets a message that says what to do."""
    text = str(error)
    reinstall = ("or reinstall the CPU build: pip install --no-cache-dir --force-reinstall "
                 "llama-cpp-python==0.3.36 pylfm")
    if "libcuda.so" in text:
        return ImportError(f"{text}\npylfm's llama.cpp was built with CUDA, which needs the NVIDIA driver "
                           f"(libcuda.so.1) on this machine: install the driver, {reinstall}")
    if "libcudart" in text or "libcublas" in text:
        return ImportError(f"{text}\npylfm's llama.cpp was built with CUDA and needs the CUDA runtime "
                           f"libraries (libcudart, libcublas) of the toolkit it was built with on the library "
                           f"path: install that CUDA runtime, {reinstall}")
    return error


def system_info() -> Dict[str, Any]:
    """The backends compiled into this build (CPU, CUDA, Metal, ...), visible devices, and
    ``cpu``: the CPU backend's features, extra buffer types and weight placement policy
    (`pylfm.engine.cpu_weights.cpu_info`)."""
    from .. import _core  # lazily: device strings are checked without loading llama.cpp
    from .cpu_weights import cpu_info

    info = dict(_core.system_info())
    info["cpu"] = cpu_info()
    return info


# ---------------------------------------------------------------------- helpers


def _unavailable(device: str, kind: str, index: Optional[int], candidates: List[Dict[str, Any]],
                 info: Dict[str, Any]) -> str:
    backends = [str(b) for b in info.get("backends", [])]
    have = ", ".join(backends) or "none"
    if candidates:  # the kind exists, the index does not
        listing = ", ".join(f"{kind}:{i} = {g['description']}" for i, g in enumerate(candidates))
        return (f"device {device!r} does not exist: this machine has {len(candidates)} "
                f"{'GPU' if kind == 'gpu' else BACKENDS[kind].label} device(s) ({listing})")
    if kind == "gpu":
        how = ("install a GPU build, e.g. CUDA: CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --no-cache-dir "
               "--force-reinstall llama-cpp-python==0.3.36 pylfm (see the README's GPU section)")
        return f"device {device!r} is not available in this build (backends: {have}); {how}, or use device='cpu'"
    backend = BACKENDS[kind]
    if backend.registry in backends:  # compiled in, but it sees no device
        hint = ("check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES" if kind == "cuda"
                else "check the GPU driver")
        return (f"device {device!r}: this build has {backend.label}, but it sees no {backend.label} device; "
                f"{hint}, or use device='cpu'")
    if kind == "metal":
        how = "Metal is built in by default on Apple Silicon Macs only"
    else:
        how = (f"install a {backend.label} build: CMAKE_ARGS=\"{backend.build_flag}\" pip install --no-cache-dir "
               "--force-reinstall llama-cpp-python==0.3.36 pylfm (see the README's GPU section)")
    return (f"device {device!r}: {backend.label} is not available in this build (backends: {have}); {how}, "
            "or use device='cpu'")


def _sysctl_int(key: str) -> int:
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip()) if out.returncode == 0 else 0
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0
