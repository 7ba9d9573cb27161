"""Check and time every Numba kernel version: ``python -m minisd.ops.dev [op ...]``.

The cases of minisd's kernel harness (minisd/ops/harness.py): for each op, fresh random inputs (ragged
sizes), each version's output poisoned with NaN before it runs, compared with torch in float64 (randn:
with the numpy generator, bit for bit) by the harness's one error metric. On a GPU it also times each
version (``harness.time_gpu``) at minisd's real sizes (batch 8; conv2d and linear also at batch 1's, their
``gpu_variants``) and prints GB/s (memory-bound ops) or TFLOP/s (conv2d, linear, attention). In the
simulator it only checks, at tiny sizes. ``tests/test_ops.py`` runs the same checks for every version.
"""

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import minisd.mode as mode
from minisd import schedulers
from minisd.ops import rng as minisd_rng
from minisd.ops.harness import rel_error, throughput, time_gpu


@dataclass
class Case:
    make: Callable  # (rng, full, **variant) -> (inputs: dict, out_shape)
    launch: Callable  # (kernel_fn, device inputs: dict, out) -> None
    reference: Callable  # (torch float64 inputs: dict) -> torch tensor
    flops: Callable = None  # (inputs, out_shape) -> flop count; None: memory-bound, report GB/s
    tol: float = 2e-6  # max |out - ref| / max |ref|; float32 rounding is ~6e-8 per operation
    gpu_variants: tuple = ()  # variants (minisd's batch-1 shapes) checked and timed on a GPU besides the default


def _r(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _pick(full, gpu, sim):
    return gpu if full else sim


# --- the cases: sizes are (GPU: minisd's real layers at batch 8) vs (simulator: tiny and ragged) ---------


def _conv_make(rng, full, stride=1, padding=1, k=3, bias=True, shape=None):
    n, c, h, w, o = shape or _pick(full, (8, 64, 32, 32, 64), (2, 3, 9, 7, 3))
    kh, kw = (k, k) if isinstance(k, int) else k
    inputs = {"x": _r(rng, n, c, h, w), "w": _r(rng, o, c, kh, kw), "b": _r(rng, o) if bias else None}
    inputs.update(stride=stride, padding=padding)
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    return inputs, (n, o, ho, wo)


def _conv_flops(i, out_shape):
    return 2 * math.prod(out_shape) * math.prod(i["w"].shape[1:])


def _gn_make(rng, full, silu=True, affine=True, shape=None):
    n, c, h, w, g = shape or _pick(full, (8, 64, 32, 32, 8), (2, 6, 5, 7, 3))
    x = _r(rng, n, c, h * w) * 3 + 1  # an offset mean: catches a one-pass sum-of-squares variance
    inputs = {
        "x": x,
        "groups": g,
        "weight": _r(rng, c) if affine else None,
        "bias": _r(rng, c) if affine else None,
    }
    inputs.update(eps=np.float32(1e-5), silu=silu)
    return inputs, x.shape


def _gn_ref(i):
    y = F.group_norm(i["x"], i["groups"], i["weight"], i["bias"], float(i["eps"]))
    return F.silu(y) if i["silu"] else y


def _ln_make(rng, full, affine=True, shape=None):
    m, d = shape or _pick(full, (8 * 256, 64), (7, 37))
    x = _r(rng, m, d) * 2 + 1
    inputs = {"x": x, "weight": _r(rng, d) if affine else None, "bias": _r(rng, d) if affine else None}
    return inputs | {"eps": np.float32(1e-5)}, x.shape


def _softmax_make(rng, full, shape=None):
    x = _r(rng, *(shape or _pick(full, (8 * 2 * 256, 256), (7, 45)))) * 4
    return {"x": x}, x.shape


def _attn_make(rng, full, shape=None):
    b, lq, lk, heads, d = shape or _pick(full, (8, 256, 256, 2, 32), (2, 9, 11, 2, 8))  # Lk != Lq: cross
    q = _r(rng, b, lq, heads * d)
    inputs = {"q": q, "k": _r(rng, b, lk, heads * d), "v": _r(rng, b, lk, heads * d), "heads": heads}
    return inputs | {"scale": np.float32(1 / math.sqrt(d))}, q.shape


def _attn_ref(i):
    b, h = i["q"].shape[0], i["heads"]
    split = lambda t: t.reshape(b, t.shape[1], h, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(i["q"]), split(i["k"]), split(i["v"])
    out = torch.softmax(q @ k.transpose(-1, -2) * float(i["scale"]), -1) @ v
    return out.transpose(1, 2).reshape(i["q"].shape)


def _attn_flops(i, out_shape):
    b, lq, hd = i["q"].shape
    return 4 * b * lq * i["k"].shape[1] * hd


def _linear_make(rng, full, bias=True, shape=None):
    m, k, n = shape or _pick(full, (8 * 256, 64, 512), (21, 23, 19))
    return {"x": _r(rng, m, k), "w": _r(rng, n, k), "b": _r(rng, n) if bias else None}, (m, n)


def _flat_make(shape_full, shape_sim, names):
    def make(rng, full):
        shape = _pick(full, shape_full, shape_sim)
        return {n: _r(rng, *shape) for n in names}, shape

    return make


def _add_make(rng, full, broadcast=True):
    n, c, h, w = _pick(full, (8, 64, 32, 32), (2, 3, 5, 7))
    b = _r(rng, n, c) if broadcast else _r(rng, n, c, h, w)
    return {"a": _r(rng, n * c * h * w), "b": b.reshape(-1), "inner": h * w if broadcast else 1}, (
        n * c * h * w,
    )


def _add_ref(i):
    return i["a"] + i["b"].repeat_interleave(i["inner"])


def _step_make(rng, full, eta=0.5, noise=True, clip=True):
    n = _pick(full, 8 * 3 * 32 * 32, 301)
    a_t, a_prev = 0.3, 0.6
    inputs = {"sample": _r(rng, n) * 2, "eps": _r(rng, n), "noise": _r(rng, n) if noise else None}
    inputs |= {"coef": schedulers.ddim_coefficients(a_t, a_prev, eta), "clip": 1.0 if clip else None}
    return inputs | {"alphas": (a_t, a_prev, eta)}, (n,)


def _ddim_ref(i):
    """diffusers' DDIMScheduler.step (epsilon prediction), written out independently in float64."""
    a_t, a_prev, eta = i["alphas"]
    x, e = i["sample"], i["eps"]
    x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
    if i["clip"] is not None:
        x0 = x0.clamp(-i["clip"], i["clip"])
    std = eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)) ** 0.5
    out = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * e
    return out + std * i["noise"] if i["noise"] is not None else out


def _temb_make(rng, full, flip=True, shift=0):
    b, dim = _pick(full, (8, 32), (5, 33))
    t = rng.integers(0, 1000, b).astype(np.int64)
    return {"t": t, "half": dim // 2, "shift": shift, "flip": flip}, (b, dim)


def _temb_ref(i):
    """diffusers' get_timestep_embedding in float64."""
    half = i["half"]
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - i["shift"]))
    arg = i["t"].double()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], -1)
    if i["flip"]:
        emb = torch.cat([emb[:, half:], emb[:, :half]], -1)
    dim = i["out_shape"][1]
    return F.pad(emb, (0, dim - 2 * half))


def _bytes(i, out_shape):
    arrays = [v for v in i.values() if isinstance(v, np.ndarray)]
    return 4 * (sum(a.size for a in arrays) + math.prod(out_shape))


CASES = {
    "conv2d": Case(
        _conv_make,
        lambda f, i, out: f(i["x"], i["w"], i["b"], out, i["stride"], i["padding"]),
        lambda i: F.conv2d(i["x"], i["w"], i["b"], i["stride"], i["padding"]),
        _conv_flops,
        gpu_variants=({"shape": (2, 256, 8, 8, 256)}, {"shape": (2, 128, 16, 16, 128)}),  # batch 1, guidance
    ),
    "group_norm": Case(
        _gn_make,
        lambda f, i, out: f(i["x"], i["groups"], i["weight"], i["bias"], i["eps"], i["silu"], out),
        _gn_ref,
        tol=1e-5,  # v1 sums 8192 floats one by one at full size: ~2e-6 of rounding is expected there
    ),
    "layer_norm": Case(
        _ln_make,
        lambda f, i, out: f(i["x"], i["weight"], i["bias"], i["eps"], out),
        lambda i: F.layer_norm(i["x"], i["x"].shape[-1:], i["weight"], i["bias"], float(i["eps"])),
    ),
    "softmax": Case(  # v1's one-thread-per-row sum of exps rounds once per element: 2.3e-6 seen on an H200
        _softmax_make, lambda f, i, out: f(i["x"], out), lambda i: torch.softmax(i["x"], -1), tol=4e-6
    ),
    "attention": Case(
        _attn_make,
        lambda f, i, out: f(i["q"], i["k"], i["v"], i["heads"], i["scale"], out),
        _attn_ref,
        _attn_flops,
    ),
    "linear": Case(
        _linear_make,
        lambda f, i, out: f(i["x"], i["w"], i["b"], out),
        lambda i: F.linear(i["x"], i["w"], i["b"]),
        lambda i, o: 2 * math.prod(o) * i["x"].shape[1],
        # batch 1 with guidance: 2 rows of 8x8 and of 16x16 tokens
        gpu_variants=({"shape": (128, 256, 768)}, {"shape": (512, 128, 1024)}),
    ),
    "silu": Case(
        _flat_make((1 << 19,), (301,), "x"), lambda f, i, out: f(i["x"], out), lambda i: F.silu(i["x"])
    ),
    "gelu": Case(
        _flat_make((1 << 19,), (301,), "x"), lambda f, i, out: f(i["x"], out), lambda i: F.gelu(i["x"])
    ),
    "geglu": Case(
        lambda rng, full: (
            {"x": _r(rng, *_pick(full, (2048, 512), (5, 26)))},
            _pick(full, (2048, 256), (5, 13)),
        ),
        lambda f, i, out: f(i["x"], out),
        lambda i: i["x"].chunk(2, -1)[0] * F.gelu(i["x"].chunk(2, -1)[1]),
    ),
    "add": Case(_add_make, lambda f, i, out: f(i["a"], i["b"], i["inner"], out), _add_ref),
    "scale_add": Case(
        _flat_make((1 << 19,), (301,), "ab"),
        lambda f, i, out: f(i["a"], i["b"], np.float32(0.7), np.float32(-1.3), out),
        lambda i: 0.7 * i["a"] - 1.3 * i["b"],
    ),
    "cfg_combine": Case(
        _flat_make((8 * 3 * 32 * 32,), (301,), "uc"),
        lambda f, i, out: f(i["u"], i["c"], np.float32(7.5), out),
        lambda i: i["u"] + 7.5 * (i["c"] - i["u"]),
    ),
    "upsample_nearest2x": Case(
        lambda rng, full: ({"x": _r(rng, *_pick(full, (8, 64, 16, 16), (2, 3, 5, 4)))}, None),
        lambda f, i, out: f(i["x"], out),
        lambda i: F.interpolate(i["x"], scale_factor=2, mode="nearest"),
    ),
    "concat_channels": Case(
        lambda rng, full: (
            {
                "a": _r(rng, *_pick(full, (8, 64, 32, 32), (2, 3, 5, 4))),
                "b": _r(rng, *_pick(full, (8, 32, 32, 32), (2, 2, 5, 4))),
            },
            None,
        ),
        lambda f, i, out: f(i["a"], i["b"], out),
        lambda i: torch.cat([i["a"], i["b"]], 1),
    ),
    "transpose": Case(
        lambda rng, full: ({"x": _r(rng, *_pick(full, (8, 64, 1024), (2, 35, 33)))}, None),
        lambda f, i, out: f(i["x"], out),
        lambda i: i["x"].transpose(1, 2),
    ),
    "timestep_embedding": Case(
        _temb_make, lambda f, i, out: f(i["t"], i["half"], i["shift"], i["flip"], out), _temb_ref
    ),
    "scheduler_step": Case(
        _step_make,
        lambda f, i, out: f(i["sample"], i["eps"], i["noise"], i["coef"], i["clip"], out),
        _ddim_ref,
    ),
    "randn": Case(
        lambda rng, full: ({"seed": int(rng.integers(0, 2**63))}, (_pick(full, 1 << 20, 301),)),
        lambda f, i, out: f(i["seed"], out),
        lambda i: torch.from_numpy(minisd_rng.normal_numpy(i["out_shape"][0], i["seed"]).astype(np.float64)),
        # The same generator: bit for bit in practice. 1e-7 admits a last-bit float32 difference should a
        # GPU's float64 log/cos differ from numpy's by an ulp (~1e-8 per value), and nothing else.
        tol=1e-7,
    ),
}


def _out_shape(case, inputs, out_shape):
    if out_shape is not None:
        return out_shape
    return tuple(case.reference(_to_torch(inputs)).shape)


def _to_torch(inputs):
    return {k: torch.from_numpy(v).double() if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


def _to_device(inputs):
    from minisd.kernel_backend import cuda

    return {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


def check(op, version, rng, full=False, **variant):
    """Run one kernel version on fresh inputs, output poisoned; returns (error, tolerance)."""
    from minisd.kernel_backend import cuda
    from minisd.ops.numba import VERSIONS

    case = CASES[op]
    inputs, out_shape = case.make(rng, full, **variant)
    out_shape = _out_shape(case, inputs, out_shape)
    ref = case.reference(_to_torch(inputs) | {"out_shape": out_shape}).numpy()
    out = cuda.to_device(np.full(out_shape, np.nan, np.float32))  # poison: an unwritten element fails
    case.launch(VERSIONS[op][version], _to_device(inputs), out)
    return rel_error(out, ref), case.tol


def time_version(op, version, rng, **variant):
    """(milliseconds per call, bytes or None, flops or None) at full size, by ``harness.time_gpu``."""
    from minisd.kernel_backend import cuda
    from minisd.ops.numba import VERSIONS

    case = CASES[op]
    inputs, out_shape = case.make(rng, True, **variant)
    out_shape = _out_shape(case, inputs, out_shape)
    dev, out = _to_device(inputs), cuda.device_array(out_shape, np.float32)
    fn = VERSIONS[op][version]
    ms = time_gpu(lambda: case.launch(fn, dev, out))  # its warm-up compiles the kernel
    flops = case.flops(inputs, out_shape) if case.flops else None
    return ms, (None if flops else _bytes(inputs, out_shape)), flops


def main(argv=None):
    from minisd.ops.numba import VERSIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help=f"ops to run (default all): {', '.join(CASES)}")
    parser.add_argument(
        "--small", action="store_true", help="tiny ragged sizes, no timing (for compute-sanitizer on a GPU)"
    )
    args = parser.parse_args(argv)
    timed = mode.ON_GPU and not args.small
    unknown = [o for o in args.ops if o not in CASES]
    if unknown:
        parser.error(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    mode.banner()
    print(
        f"{'op':<20}{'version':>8}{'max rel err':>14}" + (f"{'time':>12}{'throughput':>16}" if timed else "")
    )
    failed = 0
    for op in args.ops or CASES:
        for version in sorted(VERSIONS[op]):
            rng = np.random.default_rng(abs(hash((op, version))) % 2**32)
            for variant in ({},) + (CASES[op].gpu_variants if timed else ()):
                err, tol = check(op, version, rng, full=timed, **variant)
                ok = err <= tol
                failed += not ok
                line = f"{op:<20}{'v' + str(version):>8}{err:>14.2e}"
                if timed and ok:
                    ms, nbytes, flops = time_version(op, version, rng, **variant)
                    line += f"{ms * 1e3:>10.1f}us{throughput(ms, bytes_moved=nbytes, flops=flops):>16}"
                line += "".join(f"  {k}={v}" for k, v in variant.items())
                print(line + ("" if ok else f"   FAILED (tolerance {tol:.0e})"))
    if not mode.ON_GPU:
        print("(simulator: checked at tiny sizes; no timings without a GPU)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
