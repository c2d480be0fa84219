"""Inference precision of the avatar's networks: float32, or bfloat16 / float16 through ``torch.autocast``.

Why: on this project's CPUs (AVX-512 with native bf16, e.g. AMD Zen 4, Intel Sapphire Rapids) oneDNN runs the
re-render U-Net's convolutions in bf16 about twice as fast as in float32, and on GPUs bf16/fp16 use the tensor
cores. The images differ from float32 by less than one 8-bit level on average (``benchmarks/animate.py`` prints
the PSNR between both). ``auto`` takes bf16 only where the hardware does it natively: emulated bf16 is slower.
Training stays float32 unless a config asks Lightning for ``--trainer.precision=bf16-mixed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["auto", "32", "bf16", "16"]
PRECISIONS: tuple[str, ...] = ("auto", "32", "bf16", "16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CPU: oneDNN's check for AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(requested: str, device: torch.device, backend: str = "torch") -> str:
    """``auto`` -> ``bf16`` where native, else ``32``; explicit choices are checked against the device and the
    inference backend (``avatar_lightning.runtime``: only eager torch runs under autocast; the others are float32)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if backend != "torch":
        if requested not in ("auto", "32"):
            raise ValueError(f"the {backend} backend runs the networks in float32; use precision 32 (or auto) with it")
        return "32"
    if requested == "auto":
        return "bf16" if native_bf16(device) else "32"
    if requested == "16" and device.type != "cuda":
        raise ValueError("precision 16 (float16) is for CUDA devices; on a CPU use bf16 or 32")
    return requested


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed networks at ``precision`` (a resolved one: ``32``, ``bf16`` or ``16``)."""
    if precision == "32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        yield
