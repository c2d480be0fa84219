"""Inference backends for the avatar's networks: run an eval-mode ``nn.Module`` through eager PyTorch (the
reference), ONNX Runtime or ``torch.compile``, tensors in and tensors out.

    runner = make_runner(avatar.rerenderer.unet, "onnxruntime")
    raw = runner(torch.cat([i_orig, coverage], dim=1))          # (B, 6, H, W), like unet(...)
    texture, blend = make_runner(avatar.head_vae.vae.decoder, "onnxruntime")(z)

PyTorch stays the training path; these backends only run a trained network. What each costs and gains on the
re-render U-Net is measured in ``benchmarks/backends.py`` (eager contiguous, channels-last, bf16, ONNX Runtime,
torch.compile, side by side), and ``tests/test_runtime.py`` holds every backend to eager PyTorch's outputs. On a
2-core Zen 4 (``benchmarks/results/backends.json``, 256², batch 1 / 16) ONNX Runtime and torch.compile run the
float32 U-Net 1.2-1.4x faster than eager NCHW, about as fast as eager channels-last; eager channels-last under
bf16 autocast (``avatar_lightning.precision``) is 2-2.6x faster and stays the fastest path where bf16 is native.

``onnxruntime``: the module is captured with ``torch.export`` (batch dimension dynamic, every other dimension as
in the first input of that shape) and translated with ``torch.onnx.export`` (needs ``onnxscript``); one
``InferenceSession`` per (weights, input shape without the batch) is kept. Capturing ourselves instead of letting
``torch.onnx.export`` do it matters: on a constraint it cannot meet (the U-Net's ``if pad_h or pad_w`` branch when
height and width are dynamic) the ONNX exporter silently specialises and the model is wrong for other sizes,
where ``torch.export`` refuses; a module whose code fixes the batch size is then exported for that one shape.
Before each call the runner checks whether any parameter or buffer was changed in place or replaced since the
last call (tensor version counters, cheap); if so, it hashes the weights again, so a changed weight never runs
through a model exported from the old ones. Exported models live in memory by default (an export of the default
U-Net takes seconds; an avatar folder may be read-only or shared); pass ``cache_dir`` (e.g. ``<avatar>/onnx``) to
keep them across processes: a file's name holds a hash of the weights, the module's structure and code, the input
shape and dtype, so a stale file is never picked up.

``compile``: ``torch.compile(module, dynamic=False)``: one compiled graph per input shape (a new batch size or
resolution recompiles, tens of seconds on a 2-core CPU; dynamic shapes fail in inductor on the U-Net's ``-h %
multiple`` padding with torch 2.14). On CPU it needs a C++ compiler (g++ or clang++, or ``CXX``). Weights are
graph inputs, so changed weights take effect without recompiling.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from avatar_lightning.checkpoints import weights_fingerprint

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "compile")
OUT_SPEC = "avatar_lightning.out_spec"  # ONNX metadata key: the module's output structure (torch pytree spec)
Runner = Callable[[Tensor], Any]
"""A backend's forward pass: ``runner(x)`` returns what ``module(x)`` returns (a tensor or a tuple of tensors),
on ``x``'s device, without gradients."""


class BackendUnavailableError(ImportError):
    """A backend's library (or, for ``compile`` on CPU, a C++ compiler) is missing on this machine."""


def make_runner(module: nn.Module, backend: str, *, cache_dir: str | Path | None = None) -> Runner:
    """A forward pass of ``module`` (in eval mode) through ``backend`` (one of ``BACKENDS``).

    Args:
        module: an inference-only network taking one tensor, e.g. ``rerenderer.unet`` or ``head_vae.vae.decoder``.
        backend: ``torch`` (eager, the reference), ``onnxruntime`` or ``compile``.
        cache_dir: ``onnxruntime`` only: a folder to keep exported ``.onnx`` files in (None: in memory only).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if module.training:
        raise ValueError(f"{type(module).__name__} is in training mode; call .eval() before making a runner "
                         "(batch norm and dropout would run differently)")
    if backend == "torch":
        return _without_grad(module)
    if backend == "compile":
        _check_cxx_compiler(module)
        return _without_grad(torch.compile(module, dynamic=False))
    return OnnxRunner(module, cache_dir)


def _without_grad(forward: Callable[[Tensor], Any]) -> Runner:
    def run(x: Tensor) -> Any:
        with torch.no_grad():
            return forward(x)

    return run


def _check_cxx_compiler(module: nn.Module) -> None:
    tensors = [*module.parameters(), *module.buffers()]
    if tensors and tensors[0].device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:
        return  # another torch layout: let torch.compile report it
    except Exception as err:
        raise BackendUnavailableError(f"backend 'compile' on CPU needs a C++ compiler (install g++ or clang++, or "
                                      f"point CXX at one): {err}") from None


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(f"backend 'onnxruntime' needs the onnxruntime package: pip install "
                                      f"onnxruntime ({err})") from None
    return onnxruntime


def _check_onnx_exporter() -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx.export's translator; it pulls the onnx package)
    except ImportError as err:
        raise BackendUnavailableError(f"backend 'onnxruntime' exports with torch.onnx, which needs onnxscript: pip "
                                      f"install onnxscript ({err})") from None


def _structure_digest(module: nn.Module) -> str:
    """What besides the weights decides the exported graph: the module tree (repr), its classes' code, torch."""
    digest = hashlib.sha256(f"{torch.__version__}\n{module!r}\n".encode())
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = f"{cls.__module__}.{cls.__qualname__}"
        digest.update(source.encode())
    return digest.hexdigest()


class OnnxRunner:
    """``module`` exported to ONNX and run with ONNX Runtime; see the module docstring for when it re-exports.

    Sessions run on ``CUDAExecutionProvider`` for CUDA inputs where ONNX Runtime has it (the ``onnxruntime-gpu``
    wheel), else on ``CPUExecutionProvider`` with ``torch.get_num_threads()`` threads; inputs and outputs go
    through host memory (numpy), which on a GPU would want I/O binding instead (not done: no GPU to test it on).
    """

    def __init__(self, module: nn.Module, cache_dir: str | Path | None = None) -> None:
        self.ort = _import_onnxruntime()
        _check_onnx_exporter()
        self.module = module
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.structure = _structure_digest(module)
        self.sessions: dict[tuple, tuple] = {}  # key(x) -> what _open returns
        self.static_batch = False  # set once torch.export refused a dynamic batch for this module
        self.exports = 0  # how many times the module was exported (tests read it)
        self._versions: tuple = ()
        self._weights = ""

    def weights(self) -> str:
        """sha256 of the current weights, recomputed only when a tensor was changed in place or replaced."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        versions = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
        if versions != self._versions:
            self._weights, self._versions = weights_fingerprint(self.module), versions
        return self._weights

    def key(self, x: Tensor) -> tuple:
        """What an exported model is valid for: the weights, the input's shape (without the batch where it is
        dynamic), dtype and device type."""
        shape = tuple(x.shape) if self.static_batch else tuple(x.shape[1:])
        return self.weights(), shape, x.dtype, x.device.type

    def path(self, key: tuple) -> Path | None:
        if self.cache_dir is None:
            return None
        name = hashlib.sha256(repr((self.structure, self.static_batch, *key)).encode()).hexdigest()[:24]
        return self.cache_dir / f"{type(self.module).__name__}-{name}.onnx"

    def __call__(self, x: Tensor) -> Any:
        if self.module.training:
            raise ValueError(f"{type(self.module).__name__} was put back in training mode; call .eval()")
        key = self.key(x)
        if key not in self.sessions:
            path = self.path(key)
            if path is not None and path.is_file():
                model = path.read_bytes()
            else:
                model = self._export(x)
                key, path = self.key(x), self.path(self.key(x))  # the whole shape if the batch turned out fixed
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
                        part.write(model)
                    os.replace(part.name, path)  # never a half-written file under the final name
            self.sessions[key] = self._open(model, x.device)
        session, input_name, out_spec = self.sessions[key]
        outputs = session.run(None, {input_name: x.detach().cpu().contiguous().numpy()})
        return pytree.tree_unflatten([torch.from_numpy(out).to(x.device) for out in outputs], out_spec)

    def _open(self, model: bytes, device: torch.device) -> tuple[Any, str, pytree.TreeSpec]:
        """An ``InferenceSession`` of ``model``, its input's name and the module's output structure."""
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in self.ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = self.ort.InferenceSession(model, options, providers=providers)
        out_spec = pytree.treespec_loads(session.get_modelmeta().custom_metadata_map[OUT_SPEC])
        return session, session.get_inputs()[0].name, out_spec

    def _export(self, x: Tensor) -> bytes:
        """The ONNX model of the module at ``x``'s shape (batch dynamic where the module allows it), with the
        structure of its outputs (a tensor, a tuple...) in the model's metadata."""
        from torch._dynamo.exc import UserError

        # torch.export specialises a dimension of size 0 or 1, so the example has a batch of at least 2.
        example = x.detach()[:1].expand(max(len(x), 2), *x.shape[1:]).contiguous()
        program = None
        if not self.static_batch:
            try:
                program = torch.export.export(self.module, (example,), strict=False,
                                              dynamic_shapes=({0: torch.export.Dim("batch")},))
            except UserError:  # the module's code fixes the batch size (a constraint violation): export per shape
                self.static_batch = True
        if program is None:
            program = torch.export.export(self.module, (x.detach().contiguous(),), strict=False)
        self.exports += 1
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, input_names=["x"])
        onnx_program.model.metadata_props[OUT_SPEC] = pytree.treespec_dumps(program.call_spec.out_spec)
        return onnx_program.model_proto.SerializeToString()
