"""Per-run speed options applied to the loaded models: autocast precision, CPU kernels, compile.

The pipeline's weights stay as loaded; a run's options (`autocast`, `cpu_kernels`, `compile` in
LipsyncOptions) are applied for that run only and undone afterwards, so one loaded pipeline
serves runs with different options (the benchmark, the server). What is costly to build (int8
copies of the Linear layers, the compiled UNet) is built once and cached. `SpeedSetup` (the
pipeline's `speed`) does this; it is not accelerate's `Accelerator`, which the trainers use.

- autocast: torch.autocast in bf16/fp16 for the UNet and VAE, only where the device computes it
  natively (latentsync/device.py decides; emulated bf16 on an AVX2 CPU is 4-90x slower);
- int8: the UNet's Linear layers (about 40% of its FLOPs: attention projections, feed-forward)
  swapped for dynamically quantised int8 ones (weights int8, activations quantised per call);
- channels_last: the UNet's conv weights in NHWC, which oneDNN convolves faster on many CPUs;
- compile: torch.compile of the UNet (the first segment pays the compilation).
"""

import copy
import logging
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from latentsync.device import autocast_dtype

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """How one run calls the models: the UNet callable and the autocast dtype (None: full precision)."""

    unet: Callable
    autocast: torch.dtype | None = None
    device_type: str = "cpu"

    def cast(self):
        """The autocast context of this run (a no-op without reduced precision)."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast)


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights (dynamic quantisation); takes and returns the caller's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        from torch.ao.nn.quantized import dynamic
        from torch.ao.quantization import default_dynamic_qconfig

        source = copy.deepcopy(linear).float().cpu()
        source.qconfig = default_dynamic_qconfig
        with warnings.catch_warnings():  # torch flags its quantised tensor API as deprecated
            warnings.simplefilter("ignore", UserWarning)
            self.quantized = dynamic.Linear.from_float(source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.quantized(x.float()).to(x.dtype)


def int8_linears(model: nn.Module) -> dict[str, nn.Module]:
    """An Int8Linear for every nn.Linear of `model`, by module name."""
    return {name: Int8Linear(m) for name, m in model.named_modules() if type(m) is nn.Linear}


@contextmanager
def swapped_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> Iterator[None]:
    """`model` with the named submodules replaced, restored on exit."""
    originals = {name: model.get_submodule(name) for name in replacements}
    try:
        for name, module in replacements.items():
            _set_submodule(model, name, module)
        yield
    finally:
        for name, module in originals.items():
            _set_submodule(model, name, module)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """The 4-D conv weights of `model` in channels_last memory format, back to contiguous on exit."""
    params = [p for m in model.modules() if isinstance(m, nn.Conv2d) for p in (m.weight,) if p.dim() == 4]
    try:
        for p in params:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for p in params:
            p.data = p.data.contiguous()


class SpeedSetup:
    """Applies a run's speed options to one UNet; caches its int8 layers and compiled form."""

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self._int8: dict[str, nn.Module] | None = None
        self._int8_versions: tuple | None = None  # the Linear weights' versions the int8 copies were made from
        self._compiled: Callable | None = None

    @contextmanager
    def apply(self, opts) -> Iterator[Runtime]:
        """The Runtime of a run with LipsyncOptions `opts`; the UNet is restored when it ends."""
        device = self.unet.device
        kernels = opts.cpu_kernels
        if kernels != "none" and device.type != "cpu":
            logger.warning("cpu_kernels %s: the models run on %s; ignored", kernels, device.type)
            kernels = "none"
        with ExitStack() as stack:
            if "int8" in kernels:
                stack.enter_context(swapped_modules(self.unet, self.int8_layers()))
            if "channels_last" in kernels:
                stack.enter_context(channels_last(self.unet))
            unet = self.compiled() if opts.compile else self.unet
            yield Runtime(unet, autocast_dtype(opts.autocast, device), device.type)

    def int8_layers(self) -> dict[str, nn.Module]:
        """The int8 copies of the UNet's Linear layers, rebuilt when a weight changed since (training)."""
        versions = tuple(m.weight._version for m in self.unet.modules() if type(m) is nn.Linear)
        if self._int8 is None or versions != self._int8_versions:
            self._int8, self._int8_versions = int8_linears(self.unet), versions
        return self._int8

    def compiled(self) -> Callable:
        if self._compiled is None:
            self._compiled = torch.compile(self.unet)
        return self._compiled
