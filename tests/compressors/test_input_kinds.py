"""What compress accepts and what decompress returns: numpy in, numpy out; a torch tensor in, a torch tensor out."""

import numpy as np
import pytest
import torch

import gcomp
from gcomp import wire
from gcomp.errors import ConfigError, GcompError

SPECS = ["none", "fp16", "bf16", "topk:ratio=0.1", "dgc:ratio=0.1", "randomk:ratio=0.2", "threshold:tau=0.5", "qsgd",
         "uniform:bits=4", "sign", "terngrad", "natural", "powersgd:rank=2"]
NUMPY = [np.float32, np.float16, np.float64]
TORCH = [torch.float32, torch.float16, torch.float64, torch.bfloat16]
N = 300


def _x():
    return np.random.default_rng(0).standard_normal(N).astype(np.float32)


def _as_f32(out):
    return out.float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", NUMPY, ids=lambda d: np.dtype(d).name)
def test_numpy_in_numpy_out(spec, dtype):
    x = _x().astype(dtype)
    c = gcomp.compressor(spec).compress(x)
    out = gcomp.compressor(spec).decompress(c)
    assert type(out) is np.ndarray and out.dtype == dtype and out.shape == (N,)
    assert c.kind == "numpy" and c.dtype == np.dtype(dtype).name


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", TORCH, ids=str)
def test_torch_in_torch_out_same_dtype_and_values(spec, dtype):
    x = torch.from_numpy(_x()).to(dtype)
    c = gcomp.compressor(spec).compress(x)
    out = gcomp.compressor(spec).decompress(c)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and tuple(out.shape) == (N,) and out.device.type == "cpu"
    assert c.kind == "torch"
    if dtype != torch.bfloat16:  # the same numbers as the numpy path, bit for bit
        as_numpy = x.numpy()
        want = gcomp.compressor(spec).decompress(gcomp.compressor(spec).compress(as_numpy))
        assert np.array_equal(out.numpy().view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dtype", TORCH, ids=str)
def test_a_decoded_packet_is_numpy_except_bfloat16(dtype):
    """The wire carries the dtype, not the kind: a receiver gets numpy (bfloat16, which numpy lacks: torch)."""
    comp = gcomp.compressor("topk:ratio=0.1")
    c = comp.compress(torch.from_numpy(_x()).to(dtype))
    d = wire.decode(wire.encode(c))
    out = comp.decompress(d)
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.bfloat16:
        assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    else:
        assert type(out) is np.ndarray and out.dtype == np.dtype(name)
    assert d.kind == "numpy" and d.dtype == name
    assert np.array_equal(_as_f32(out), _as_f32(comp.decompress(c)))


@pytest.mark.parametrize("spec", ["topk:ratio=0.1", "dgc:ratio=0.1", "randomk:ratio=0.2", "threshold:tau=0.5", "none",
                                  "qsgd", "fp16"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_compress_with_residual_keeps_the_kind(spec, kind):
    """Fused (topk, qsgd, dgc) and unfused (threshold, randomk, none, fp16) error-feedback paths alike."""
    comp = gcomp.compressor(spec)
    x = _x() if kind == "numpy" else torch.from_numpy(_x())
    residual = np.zeros(N, np.float32)
    c = comp.compress_with_residual(x, residual, step=2, key=5)
    assert c.kind == kind and c.dtype == "float32" and c.step == 2
    out = comp.decompress(c)
    assert isinstance(out, torch.Tensor if kind == "torch" else np.ndarray)
    np.testing.assert_allclose(_as_f32(out) + residual, _x(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_out_is_filled_and_returned_whatever_the_input_kind(kind):
    comp = gcomp.compressor("topk:ratio=0.1")
    c = comp.compress(_x() if kind == "numpy" else torch.from_numpy(_x()))
    want = _as_f32(comp.decompress(c))
    out_np = np.full(N, np.nan, np.float32)
    assert comp.decompress(c, out=out_np) is out_np and np.array_equal(out_np, want)
    out_t = torch.full((N,), float("nan"))
    assert comp.decompress(c, out=out_t) is out_t and np.array_equal(out_t.numpy(), want)
    with pytest.raises(ConfigError, match="shape"):
        comp.decompress(c, out=np.zeros(N + 1, np.float32))


def test_a_tensor_that_requires_grad_is_accepted():
    for dtype in TORCH:
        x = torch.from_numpy(_x()).to(dtype).requires_grad_(True)
        out = gcomp.compressor("none").decompress(gcomp.compressor("none").compress(x))
        assert out.dtype == dtype and not out.requires_grad


BAD_SHAPES = [(3, 3), (), (1, 300), (2, 2, 2)]


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_other_shapes_raise_a_gcomp_config_error(shape, kind):
    x = np.zeros(shape, np.float32)
    if kind == "torch":
        x = torch.from_numpy(x)
    for comp in (gcomp.compressor("topk"), gcomp.compressor("qsgd"), gcomp.compressor("threshold:tau=1")):
        with pytest.raises(ConfigError) as info:
            comp.compress(x)
        assert isinstance(info.value, GcompError) and isinstance(info.value, ValueError)  # old `except ValueError` works
        text = str(info.value)
        assert "expected a 1-D vector" in text and str(tuple(shape)) in text and "reshape(-1)" in text
        with pytest.raises(ConfigError, match="1-D"):
            comp.compress_with_residual(x, np.zeros(9, np.float32))


def test_other_types_and_dtypes_stay_type_errors():
    comp = gcomp.compressor("topk")
    for bad in (np.zeros(3, np.int64), [1.0, 2.0], torch.zeros(3, dtype=torch.int32), np.zeros(3, np.complex64)):
        with pytest.raises(TypeError):
            comp.compress(bad)
