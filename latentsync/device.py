"""Choosing the torch device and dtype: CUDA first, then Apple MPS, then the CPU.

Reduced precision is used only where the hardware computes it natively. On a CPU, bf16 needs
AVX512-BF16 or AMX-BF16 (and fp16 AVX512-FP16 or AMX-FP16); elsewhere torch emulates it and a
matmul or conv runs 4-90x *slower* than in fp32. So an explicit `bf16`/`fp16` on such a CPU falls
back to fp32 with a warning instead of silently running slower.
"""

import logging
from pathlib import Path

import torch

from latentsync.errors import UserError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# CPU feature flags (as /proc/cpuinfo and torch's cpuinfo name them) that compute a dtype natively
NATIVE_CPU_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}
CPUINFO = Path("/proc/cpuinfo")


def cpu_features() -> dict[str, bool]:
    """The CPU's feature flags: torch's own cpuinfo probe where it exists, else /proc/cpuinfo."""
    probe = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    if probe is not None:
        try:
            return {k: bool(v) for k, v in probe().items() if isinstance(v, bool)}
        except Exception:  # a private API: fall through to the file
            pass
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {flag: True for flag in flags}


def cpu_capability() -> str:
    """torch's kernel level on this CPU, e.g. "AVX2" or "AVX512" (what the benchmark reports)."""
    return torch.backends.cpu.get_cpu_capability()


def native_cpu_dtype(dtype: torch.dtype) -> bool:
    """True when this CPU computes `dtype` in hardware (fp32 always)."""
    if dtype == torch.float32:
        return True
    features = cpu_features()
    return any(features.get(flag, False) for flag in NATIVE_CPU_FLAGS.get(dtype, ()))


def native_dtype(dtype: torch.dtype, device: torch.device) -> bool:
    """True when `device` computes `dtype` natively (CUDA: bf16 needs compute capability 8+)."""
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return native_cpu_dtype(dtype)
    return dtype == torch.float16  # MPS: fp16 yes, bf16 not everywhere


def pick_device(requested: str | None = None) -> torch.device:
    """The device to run on: `requested` if usable, else the best available, with a warning."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA was requested but is not available; falling back to the CPU")
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        logger.warning("MPS was requested but is not available; falling back to the CPU")
        return torch.device("cpu")
    return device


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA by default, fp32 elsewhere; an explicit choice is honoured where it is native,
    otherwise fp32 with a warning (emulated bf16/fp16 is far slower than fp32)."""
    if requested in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested not in DTYPES:
        raise UserError(f"dtype {requested!r}: expected one of {', '.join(DTYPE_NAMES.values())}")
    dtype = DTYPES[requested]
    if not native_dtype(dtype, device):
        logger.warning("dtype %s: this %s does not compute it natively (%s), so it would run slower than fp32; "
                       "using fp32", DTYPE_NAMES[dtype], device.type, _hardware_note(dtype, device))
        return torch.float32
    return dtype


def autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the `autocast` option on `device`, or None for full precision.

    "auto" is bf16 where the device computes it natively and off elsewhere (silently); an explicit
    "bf16"/"fp16" that is not native falls back to off with a warning.
    """
    if requested in (None, "off"):
        return None
    if requested == "auto":
        return torch.bfloat16 if native_dtype(torch.bfloat16, device) else None
    dtype = DTYPES[requested]
    if not native_dtype(dtype, device):
        logger.warning("autocast %s: this %s does not compute it natively (%s); running in full precision",
                       requested, device.type, _hardware_note(dtype, device))
        return None
    return dtype


def _hardware_note(dtype: torch.dtype, device: torch.device) -> str:
    if device.type == "cpu":
        return f"CPU capability {cpu_capability()}, no {' or '.join(NATIVE_CPU_FLAGS.get(dtype, ('support',)))}"
    return f"{device.type} without native {DTYPE_NAMES[dtype]}"
