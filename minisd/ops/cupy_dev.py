"""Check every CuPy kernel against torch in float64 and time it against torch's own CUDA kernels, in one run.

    python -m minisd.ops.cupy_dev                      # a table on stdout
    python -m minisd.ops.cupy_dev --json out.json      # and every number in a JSON file

Shapes are minisd's, batch 2 (classifier-free guidance runs the UNet on the unconditional and the conditional
prompt together). Every check and time comes from minisd's kernel harness (minisd/ops/harness.py): errors
are its max |out - ref| / max |ref|, times are GPU times from ``time_cupy_graph`` / ``time_torch_graph``
(each op recorded 20 times into a CUDA graph, the graph replayed), so Python's launch overhead (~5-10 us a
call, more than most of these kernels take) stays out and the numbers compare kernels. The whole UNet is
then checked and timed, eager and as one graph: minisd/forward.py on ``Ops("cupy")``, the forward pass
minisd samples with.
"""

import argparse
import functools
import json

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

from minisd import files
from minisd.ops import Ops, rng
from minisd.ops import cupy_ops as kernels
from minisd.ops.harness import rel_error, time_cupy_graph, time_torch_graph, time_wall

ops = Ops("cupy")


def precision(prec, fn):
    """``fn`` with the matrix products in ``prec`` (cupy_ops.PRECISIONS), restored after each call."""

    def run(*args):
        kept, kernels.DEFAULT_PRECISION = kernels.DEFAULT_PRECISION, prec
        try:
            return fn(*args)
        finally:
            kernels.DEFAULT_PRECISION = kept

    return run


def us(ms):
    return ms * 1e3


# ------------------------------------------------------------------------------------------------ ops


def op_cases():
    """(name, input shapes, cupy fn, torch fn, tolerance) at minisd's shapes."""
    gelu = lambda t: F.gelu(t)  # noqa: E731
    geglu = lambda t: t.chunk(2, -1)[0] * gelu(t.chunk(2, -1)[1])  # noqa: E731

    def heads(h):  # torch on (B, L, H*D), like the 3-D cupy call
        def run(q, k, v):
            b, lq, hd = q.shape
            split = lambda t: t.reshape(b, -1, h, hd // h).transpose(1, 2)  # noqa: E731
            return (
                F.scaled_dot_product_attention(split(q), split(k), split(v))
                .transpose(1, 2)
                .reshape(b, lq, hd)
            )

        return run

    cases = []
    convs = [
        ("conv_in 3->32 @32", (2, 3, 32, 32), (32, 3, 3, 3), 1, 1),
        ("conv 32->32 @32", (2, 32, 32, 32), (32, 32, 3, 3), 1, 1),
        ("conv 64->32 @32 (skip cat)", (2, 64, 32, 32), (32, 64, 3, 3), 1, 1),
        ("conv 32->32 stride 2", (2, 32, 32, 32), (32, 32, 3, 3), 2, 1),
        ("conv 256->128 @8 (skip cat)", (2, 256, 8, 8), (128, 256, 3, 3), 1, 1),
        ("conv 1x1 256->128 @8", (2, 256, 8, 8), (128, 256, 1, 1), 1, 0),
        ("conv 64->32 @32 batch 32", (32, 64, 32, 32), (32, 64, 3, 3), 1, 1),
        ("conv 192->64 @16 batch 32", (32, 192, 16, 16), (64, 192, 3, 3), 1, 1),
    ]
    for name, xs, ws, s, p in convs:
        for prec in kernels.PRECISIONS:
            cases.append(
                (
                    f"{name} [{prec}]",
                    [xs, ws, ws[:1]],
                    precision(prec, lambda x, w, b, s=s, p=p: ops.conv2d(x, w, b, s, p)),
                    lambda x, w, b, s=s, p=p: F.conv2d(x, w, b, stride=s, padding=p),
                    {"tf32": 3e-3, "3xtf32": 5e-5}.get(prec, 1e-5),
                )
            )
    linears = [
        ("linear 64->64 (L=512)", (2, 256, 64), (64, 64)),
        ("linear 64->512 GEGLU proj", (2, 256, 64), (512, 64)),
        ("linear 256->64 ff out", (2, 256, 256), (64, 256)),
        ("linear 128->1024 @8", (2, 64, 128), (1024, 128)),
    ]
    for name, xs, ws in linears:
        for prec in kernels.PRECISIONS:
            cases.append(
                (
                    f"{name} [{prec}]",
                    [xs, ws, ws[:1]],
                    precision(prec, ops.linear),
                    F.linear,
                    {"tf32": 3e-3, "3xtf32": 5e-5}.get(prec, 1e-5),
                )
            )
    for name, qs, ks, h in [
        ("attention self L=256 2 heads", (2, 256, 64), (2, 256, 64), 2),
        ("attention cross Lk=8", (2, 256, 64), (2, 8, 64), 2),
        ("attention self L=64 4 heads", (2, 64, 128), (2, 64, 128), 4),
    ]:
        cases.append(
            (name, [qs, ks, ks], lambda q, k, v, h=h: ops.attention(q, k, v, heads=h), heads(h), 1e-5)
        )
    cases += [
        (
            "group_norm+silu (2,64,32,32)",
            [(2, 64, 32, 32), (64,), (64,)],
            lambda x, w, b: ops.group_norm(x, 8, w, b, silu=True),
            lambda x, w, b: F.silu(F.group_norm(x, 8, w, b)),
            1e-5,
        ),
        (
            "layer_norm (2,256,64)",
            [(2, 256, 64), (64,), (64,)],
            ops.layer_norm,
            lambda x, w, b: F.layer_norm(x, (64,), w, b),
            1e-5,
        ),
        ("softmax (2,2,256,256)", [(2, 2, 256, 256)], ops.softmax, lambda x: torch.softmax(x, -1), 1e-5),
        ("geglu (2,256,512)", [(2, 256, 512)], ops.geglu, geglu, 1e-5),
        ("silu (2,128)", [(2, 128)], ops.silu, F.silu, 1e-5),
        (
            "add (B,C) onto (2,64,16,16)",
            [(2, 64, 16, 16), (2, 64)],
            ops.add,
            lambda a, b: a + b[:, :, None, None],
            1e-6,
        ),
        (
            "upsample (2,128,8,8)",
            [(2, 128, 8, 8)],
            ops.upsample_nearest2x,
            lambda x: F.interpolate(x, scale_factor=2),
            0,
        ),
        (
            "concat (2,64,16,16)x2",
            [(2, 64, 16, 16), (2, 64, 16, 16)],
            ops.concat_channels,
            lambda a, b: torch.cat([a, b], 1),
            0,
        ),
        (
            "to_tokens (2,64,16,16)",
            [(2, 64, 16, 16)],
            ops.to_tokens,
            lambda x: x.flatten(2).transpose(1, 2).contiguous(),
            0,
        ),
        (
            "cfg_combine (1,3,32,32)",
            [(1, 3, 32, 32), (1, 3, 32, 32)],
            lambda a, b: ops.cfg_combine(a, b, 7.5),
            lambda a, b: a + 7.5 * (b - a),
            1e-6,
        ),
        (
            "ddim_step (1,3,32,32)",
            [(1, 3, 32, 32), (1, 3, 32, 32)],
            lambda s, e: ops.ddim_step(s, e, 0.3, 0.5),
            lambda s, e: 0.5**0.5 * ((s - 0.7**0.5 * e) / 0.3**0.5).clamp(-1, 1) + 0.5**0.5 * e,
            1e-5,
        ),
    ]
    return cases


def run_ops(stream, gen):
    rows = []
    for name, shapes, cupy_fn, torch_fn, tol in op_cases():
        host = [gen.standard_normal(s).astype(np.float32) for s in shapes]
        xs = [cp.asarray(h) for h in host]
        ts = [torch.from_numpy(h).cuda() for h in host]
        err = rel_error(cupy_fn(*xs), torch_fn(*[t.double() for t in ts]))
        ours = us(time_cupy_graph(functools.partial(cupy_fn, *xs), stream))
        theirs = us(time_torch_graph(functools.partial(torch_fn, *ts)))
        rows.append(
            dict(op=name, rel_err=err, ok=err <= tol, cupy_us=ours, torch_us=theirs, ratio=ours / theirs)
        )
    # randn: the oracle is the numpy backend's generator, bit for bit.
    n = 2 * 3 * 32 * 32
    same = int((cp.asnumpy(ops.randn((n,), 99)) == rng.normal_numpy(n, 99)).sum())
    ours = us(time_cupy_graph(lambda: ops.randn((2, 3, 32, 32), 99), stream))
    theirs = us(time_torch_graph(lambda: torch.randn(2, 3, 32, 32, device="cuda")))
    rows.append(
        dict(op="randn (2,3,32,32)", rel_err=float(n - same), ok=same == n, cupy_us=ours, torch_us=theirs)
    )
    rows[-1]["ratio"] = ours / theirs
    return rows


# ------------------------------------------------------------------------------------------------ UNet


def run_unet(stream, gen, batches=(2, 32)):
    from minisd import architecture
    from minisd.forward import Forward, prepare_params
    from minisd.model import MiniSD

    torch.manual_seed(0)
    model = MiniSD().eval()
    for p in model.parameters():  # default init leaves some paths tiny; bigger weights test more digits
        p.data.mul_(1.5)
    unet = model.unet.cuda()
    unet64 = MiniSD().unet.cuda().double().eval()
    unet64.load_state_dict(unet.state_dict())
    arch = architecture.read(model.config)
    state = {k: v.cpu().numpy() for k, v in model.state_dict().items()}  # model.unet is on the GPU now
    net = Forward(ops, prepare_params(state, arch, ops), arch)

    def unet_forward(sample, timesteps, context):  # the whole UNet: time embedding and prompt k/v included
        return net.unet(sample, net.time_projections(timesteps), net.cross_attention_kv(context))

    results = []
    for b in batches:
        sample = torch.from_numpy(gen.standard_normal((b, 3, 32, 32)).astype(np.float32)).cuda()
        ctx = torch.from_numpy(gen.standard_normal((b, 8, 64)).astype(np.float32)).cuda()
        steps = torch.from_numpy(gen.integers(0, 1000, b).astype(np.float32)).cuda()
        with torch.no_grad():
            ref = unet64(sample.double(), steps.double(), ctx.double())
            c_sample, c_steps, c_ctx = cp.asarray(sample), cp.asarray(steps), cp.asarray(ctx)
            row = dict(batch=b)
            for prec in kernels.PRECISIONS:
                row[f"rel_err_{prec}"] = rel_error(
                    precision(prec, unet_forward)(c_sample, c_steps, c_ctx), ref
                )
            row["torch_fp32_rel_err"] = rel_error(unet(sample, steps, ctx), ref)

            theirs = functools.partial(unet, sample, steps, ctx)
            row["torch_eager_us"] = us(time_wall(theirs, torch.cuda.synchronize))
            row["torch_graph_us"] = us(time_torch_graph(theirs))
            for prec in kernels.PRECISIONS:
                ours = functools.partial(precision(prec, unet_forward), c_sample, c_steps, c_ctx)
                row[f"cupy_eager_us_{prec}"] = us(time_wall(ours, cp.cuda.Device().synchronize))
                try:
                    row[f"cupy_graph_us_{prec}"] = us(time_cupy_graph(ours, stream))
                except Exception as exc:  # report, don't lose the other numbers
                    row[f"cupy_graph_us_{prec}"] = f"capture failed: {exc}"
        results.append(row)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    gen = np.random.default_rng()
    stream = cp.cuda.Stream(non_blocking=True)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(
        f"{gpu}, CuPy {cp.__version__}, torch {torch.__version__} (conv TF32 {torch.backends.cudnn.allow_tf32})"
    )
    rows = run_ops(stream, gen)
    print(f"{'op':<40}{'max err/max|ref|':>17}{'cupy us':>10}{'torch us':>10}{'ratio':>8}")
    for r in rows:
        flag = "" if r["ok"] else "  <-- FAIL"
        print(
            f"{r['op']:<40}{r['rel_err']:>17.2e}{r['cupy_us']:>10.2f}{r['torch_us']:>10.2f}{r['ratio']:>8.2f}{flag}"
        )
    unet = run_unet(stream, gen)
    for r in unet:
        print("UNet", json.dumps(r))
    if args.json:
        report = dict(
            gpu=gpu, cupy=cp.__version__, torch=torch.__version__, method=__doc__, ops=rows, unet=unet
        )
        files.write_text(args.json, json.dumps(report, indent=1))
    if not all(r["ok"] for r in rows):
        raise SystemExit("some kernels disagree with torch: see FAIL above")


if __name__ == "__main__":
    main()
