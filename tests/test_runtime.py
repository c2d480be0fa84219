"""Inference backends (``avatar_lightning.avatar.runtime``): every backend against eager PyTorch on the re-render U-Net
and the head VAE's decoder, stale exports, missing packages. No timings here: ``benchmarks/backends.py``.

torch.compile takes seconds per input shape even for these tiny networks on a 2-core CPU, so its equality tests
are marked slow; its missing-compiler message is tested in the fast set.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import Tensor

from avatar_lightning.avatar.runtime import BackendUnavailableError, make_runner
from avatar_lightning.models.head_vae import HeadVAE
from avatar_lightning.nets.unet import UNet

ATOL = 1e-4  # float32: the backends reorder sums (oneDNN, ORT's kernels, inductor); measured ~1e-5
BACKENDS = ["torch", "onnxruntime", pytest.param("compile", marks=pytest.mark.slow)]


def assert_close(actual: Tensor, expected: Tensor, atol: float = ATOL) -> None:
    """Equal shapes and a largest absolute difference within ``atol``; the message says how large and where."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs()
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    assert diff.max() <= atol, f"largest difference {diff.max():.3g} at {where} (tolerance {atol:g})"


def small_unet(seed: int = 0, depth: int = 3, width: int = 8) -> UNet:
    """The re-renderer's U-Net (I_orig + coverage in, 6 raw channels out) at test size, random weights."""
    torch.manual_seed(seed)
    return UNet(in_channels=4, out_channels=6, depth=depth, width=width, norm="group").eval()


def small_head_vae() -> HeadVAE:
    """A head VAE (16² textures, 5 blend shapes, 8 latents) with every decoding path the experiment file can switch
    on (mean texture, geometry code, and the opt-in texture axes at 8²), so that each is exported; random weights,
    batch-norm statistics, mean texture and axes."""
    torch.manual_seed(1)
    model = HeadVAE(texture_size=16, num_blend_shapes=5, latent_dim=8, width=4, perceptual_weight=0.0,
                    adversarial_weight=0.0, mean_texture=True, geometry_share=0.5, texture_axes=8)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        decoder = model.vae.decoder
        decoder.mean_logit.normal_()
        decoder.axes.linear.weight.normal_(std=0.3)
        decoder.axes.linear.bias.normal_(std=0.3)
    return model.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet_matches_eager(backend: str) -> None:
    """A width that is not a multiple of 2**depth exercises the U-Net's padding; the batch changes between calls."""
    net = small_unet()
    run = make_runner(net, backend)
    for shape in [(1, 4, 40, 58), (3, 4, 64, 64), (3, 4, 40, 58)]:
        x = torch.rand(shape)
        with torch.no_grad():
            expected = net(x)
        out = run(x)
        assert_close(out, expected)
        assert not out.requires_grad
    if backend == "onnxruntime":
        assert run.exports == 2  # one per height and width: the batch dimension is dynamic


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_vae_decode_matches_eager(backend: str) -> None:
    """The decode path animation runs (``head_vae.decode(z)``: texture and blend weights), batch 1 then 4."""
    head_vae = small_head_vae()
    run = make_runner(head_vae.vae.decoder, backend)
    for batch in (1, 4):
        z = torch.randn(batch, 8)
        with torch.no_grad():
            texture, blend = head_vae.decode(z)
        out = run(z)
        assert isinstance(out, tuple) and len(out) == 2
        assert_close(out[0], texture)
        assert_close(out[1], blend)
    if backend == "onnxruntime":
        assert run.exports == 1


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("compile", marks=pytest.mark.slow)])
def test_a_changed_weight_never_runs_through_a_stale_model(backend: str, tmp_path) -> None:
    net = small_unet(depth=1, width=4)
    cache = tmp_path / "onnx"
    run = make_runner(net, backend, **({"cache_dir": cache} if backend == "onnxruntime" else {}))
    x = torch.rand(2, 4, 12, 20)
    before = run(x)
    with torch.no_grad():
        net.head.bias.add_(1.0)  # in place, as load_state_dict does
        after = net(x)
    assert_close(run(x), after)
    assert (run(x) - before).abs().min() > 0.5
    net.head.weight = torch.nn.Parameter(torch.zeros_like(net.head.weight))  # a tensor replaced
    with torch.no_grad():
        assert_close(run(x), net(x))
    if backend == "onnxruntime":
        assert run.exports == 3 and len(list(cache.glob("*.onnx"))) == 3 and not list(cache.glob("*.part"))
        again = make_runner(net, backend, cache_dir=cache)  # another process, the same weights: the file is reused
        with torch.no_grad():
            assert_close(again(x), net(x))
        assert again.exports == 0


def test_a_fixed_batch_is_exported_per_shape() -> None:
    """A module whose code fixes the batch size (torch.export refuses a dynamic batch) is exported per shape."""

    class Fixed(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.reshape(len(x), -1).sum(dim=1) * 2

    run = make_runner(Fixed().eval(), "onnxruntime")
    for batch in (1, 3, 1):
        x = torch.rand(batch, 2, 3)
        assert_close(run(x), x.reshape(batch, -1).sum(dim=1) * 2)
    assert run.static_batch and run.exports == 2


@pytest.mark.parametrize("package", ["onnxruntime", "onnxscript"])
def test_a_missing_package_is_named(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    with pytest.raises(BackendUnavailableError, match=f"pip install {package}"):
        make_runner(small_unet(), "onnxruntime")


def test_compile_without_a_compiler_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler() -> str:
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(BackendUnavailableError, match="C\\+\\+ compiler"):
        make_runner(small_unet(), "compile")


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        make_runner(small_unet(), "tensorrt")
    with pytest.raises(ValueError, match="training mode"):
        make_runner(small_unet().train(), "onnxruntime")
    net = small_unet()
    run = make_runner(net, "onnxruntime")
    net.train()
    with pytest.raises(ValueError, match="training mode"):
        run(torch.rand(1, 4, 8, 8))
