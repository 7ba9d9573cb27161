"""Check every CuPy kernel against torch in float64 and time it against torch's own CUDA kernels, in one run.

    python -m minisd.ops.cupy_dev                      # a table on stdout
    python -m minisd.ops.cupy_dev --json out.json      # and every number in a JSON file

Shapes are minisd's, batch 2 (classifier-free guidance runs the UNet on the unconditional and the conditional
prompt together). Times are GPU times: each op is recorded 20 times into a CUDA graph and the graph is
replayed, so Python's launch overhead (~5-10 us a call, more than most of these kernels take) stays out and
the numbers compare kernels. The whole UNet is then checked and timed, eager and as one graph.
"""

import argparse
import functools
import json
import math
import statistics
import time

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

from minisd.ops import cupy_ops as ops
from minisd.ops import rng

REPS = 20  # op calls recorded in one graph
ROUNDS = 15  # graph replays timed; the median is reported


# ------------------------------------------------------------------------------------------------ timing


def cupy_us(fn, stream):
    """Median GPU microseconds of one ``fn()``, from replays of a graph of REPS calls."""
    with stream:
        fn()
        fn()  # compile, load, and fill the memory pool outside the capture
        stream.synchronize()
        stream.begin_capture()
        for _ in range(REPS):
            fn()
        graph = stream.end_capture()
        graph.launch(stream)
        times = []
        for _ in range(ROUNDS):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            graph.launch(stream)
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) * 1e3 / REPS)
    return statistics.median(times)


def torch_us(fn):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    graph.replay()
    times = []
    for _ in range(ROUNDS):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3 / REPS)
    return statistics.median(times)


def eager_us(fn, sync, calls=20):
    """Wall-clock microseconds per call, launches from Python included (what a plain loop sees)."""
    fn()
    sync()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) * 1e6 / calls)
    return best


def rel_err(got, ref):
    """max |got - ref| / max |ref|: the bound the tests use."""
    got = torch.as_tensor(cp.asnumpy(got)).double()
    ref = ref.double().cpu()
    if torch.isnan(got).any():
        return math.inf
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


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
        for prec in ops.PRECISIONS:
            cases.append(
                (
                    f"{name} [{prec}]",
                    [xs, ws, ws[:1]],
                    lambda x, w, b, s=s, p=p, prec=prec: ops.conv2d(x, w, b, s, p, precision=prec),
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
        for prec in ops.PRECISIONS:
            cases.append(
                (
                    f"{name} [{prec}]",
                    [xs, ws, ws[:1]],
                    lambda x, w, b, prec=prec: ops.linear(x, w, b, precision=prec),
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
        err = rel_err(cupy_fn(*xs), torch_fn(*[t.double() for t in ts]))
        ours, theirs = (
            cupy_us(functools.partial(cupy_fn, *xs), stream),
            torch_us(functools.partial(torch_fn, *ts)),
        )
        rows.append(
            dict(op=name, rel_err=err, ok=err <= tol, cupy_us=ours, torch_us=theirs, ratio=ours / theirs)
        )
    # randn: the oracle is the numpy backend's generator, bit for bit.
    n = 2 * 3 * 32 * 32
    same = int((cp.asnumpy(ops.randn((n,), 99)) == rng.normal_numpy(n, 99)).sum())
    ours = cupy_us(lambda: ops.randn((2, 3, 32, 32), 99), stream)
    theirs = torch_us(lambda: torch.randn(2, 3, 32, 32, device="cuda"))
    rows.append(
        dict(op="randn (2,3,32,32)", rel_err=float(n - same), ok=same == n, cupy_us=ours, torch_us=theirs)
    )
    rows[-1]["ratio"] = ours / theirs
    return rows


# ------------------------------------------------------------------------------------------------ UNet


def _resnet(P, pre, x, temb_silu, groups, eps):
    h = ops.group_norm(x, groups, P[pre + "norm1.weight"], P[pre + "norm1.bias"], eps, silu=True)
    h = ops.conv2d(h, P[pre + "conv1.weight"], P[pre + "conv1.bias"], 1, 1)
    h = ops.add(h, ops.linear(temb_silu, P[pre + "time_emb_proj.weight"], P[pre + "time_emb_proj.bias"]))
    h = ops.group_norm(h, groups, P[pre + "norm2.weight"], P[pre + "norm2.bias"], eps, silu=True)
    shortcut = x
    if pre + "conv_shortcut.weight" in P:
        shortcut = ops.conv2d(x, P[pre + "conv_shortcut.weight"], P[pre + "conv_shortcut.bias"])
    return ops.conv2d(h, P[pre + "conv2.weight"], P[pre + "conv2.bias"], 1, 1, residual=shortcut)


def _transformer(P, pre, x, context, heads, groups):
    b, c, h, w = x.shape
    t = ops.to_tokens(ops.group_norm(x, groups, P[pre + "norm.weight"], P[pre + "norm.bias"], 1e-6))
    t = ops.linear(t, P[pre + "proj_in.weight"], P[pre + "proj_in.bias"])
    blk = pre + "transformer_blocks.0."
    for i, ctx in ((1, None), (2, context)):
        a = f"{blk}attn{i}."
        n = ops.layer_norm(t, P[f"{blk}norm{i}.weight"], P[f"{blk}norm{i}.bias"])
        kv = n if ctx is None else ctx
        q, k, v = (ops.linear(src, P[a + f"to_{p}.weight"]) for src, p in ((n, "q"), (kv, "k"), (kv, "v")))
        t = ops.linear(
            ops.attention(q, k, v, heads=heads), P[a + "to_out.0.weight"], P[a + "to_out.0.bias"], residual=t
        )
    n = ops.layer_norm(t, P[blk + "norm3.weight"], P[blk + "norm3.bias"])
    g = ops.geglu(ops.linear(n, P[blk + "ff.net.0.proj.weight"], P[blk + "ff.net.0.proj.bias"]))
    t = ops.linear(g, P[blk + "ff.net.2.weight"], P[blk + "ff.net.2.bias"], residual=t)
    t = ops.linear(t, P[pre + "proj_out.weight"], P[pre + "proj_out.bias"])
    return ops.add(x, ops.from_tokens(t, h, w))


def unet_forward(unet, P, sample, timesteps, context):
    """minisd's UNet (minisd.model.UNet2DConditionModel) on the CuPy ops; P holds its weights as CuPy arrays."""
    groups, eps = unet.conv_norm_out.num_groups, unet.conv_norm_out.eps
    temb = ops.timestep_embedding(timesteps, *unet.time_proj_args)
    temb = ops.linear(ops.silu(ops.linear(temb, P["time_embedding.linear_1.weight"], P["time_embedding.linear_1.bias"])),
                      P["time_embedding.linear_2.weight"], P["time_embedding.linear_2.bias"])  # fmt: skip
    temb_silu = ops.silu(temb)  # every resnet starts with SiLU(temb): once here
    x = ops.conv2d(sample, P["conv_in.weight"], P["conv_in.bias"], 1, 1)
    skips = [x]

    def block(pre, mod, j, x):
        x = _resnet(P, f"{pre}resnets.{j}.", x, temb_silu, groups, eps)
        if getattr(mod, "attentions", None) is not None:
            heads = mod.attentions[j].transformer_blocks[0].attn1.heads
            x = _transformer(P, f"{pre}attentions.{j}.", x, context, heads, groups)
        return x

    for i, mod in enumerate(unet.down_blocks):
        for j in range(len(mod.resnets)):
            x = block(f"down_blocks.{i}.", mod, j, x)
            skips.append(x)
        if mod.downsamplers is not None:
            pre = f"down_blocks.{i}.downsamplers.0.conv."
            x = ops.conv2d(x, P[pre + "weight"], P[pre + "bias"], 2, 1)
            skips.append(x)
    mid = unet.mid_block
    x = block("mid_block.", mid, 0, x)
    x = _resnet(P, "mid_block.resnets.1.", x, temb_silu, groups, eps)
    for i, mod in enumerate(unet.up_blocks):
        for j in range(len(mod.resnets)):
            x = block(f"up_blocks.{i}.", mod, j, ops.concat_channels(x, skips.pop()))
        if mod.upsamplers is not None:
            pre = f"up_blocks.{i}.upsamplers.0.conv."
            x = ops.conv2d(ops.upsample_nearest2x(x), P[pre + "weight"], P[pre + "bias"], 1, 1)
    x = ops.group_norm(x, groups, P["conv_norm_out.weight"], P["conv_norm_out.bias"], eps, silu=True)
    return ops.conv2d(x, P["conv_out.weight"], P["conv_out.bias"], 1, 1)


def run_unet(stream, gen, batches=(2, 32)):
    from minisd.model import MiniSD

    torch.manual_seed(0)
    unet = MiniSD().unet.cuda().eval()
    for p in unet.parameters():  # default init leaves some paths tiny; bigger weights test more digits
        p.data.mul_(1.5)
    unet64 = MiniSD().unet.cuda().double().eval()
    unet64.load_state_dict(unet.state_dict())
    P = {k: cp.asarray(v.detach().contiguous()) for k, v in unet.state_dict().items()}
    results = []
    for b in batches:
        sample = torch.from_numpy(gen.standard_normal((b, 3, 32, 32)).astype(np.float32)).cuda()
        ctx = torch.from_numpy(gen.standard_normal((b, 8, 64)).astype(np.float32)).cuda()
        steps = torch.from_numpy(gen.integers(0, 1000, b).astype(np.float32)).cuda()
        with torch.no_grad():
            ref = unet64(sample.double(), steps.double(), ctx.double())
            c_sample, c_steps, c_ctx = cp.asarray(sample), cp.asarray(steps), cp.asarray(ctx)
            row = dict(batch=b)
            for prec in ops.PRECISIONS:
                ops.DEFAULT_PRECISION = prec
                row[f"rel_err_{prec}"] = rel_err(unet_forward(unet, P, c_sample, c_steps, c_ctx), ref)
            ops.DEFAULT_PRECISION = "3xtf32"
            row["torch_fp32_rel_err"] = rel_err(cp.asarray(unet(sample, steps, ctx)), ref)

            ours = functools.partial(unet_forward, unet, P, c_sample, c_steps, c_ctx)
            theirs = functools.partial(unet, sample, steps, ctx)
            row["torch_eager_us"] = eager_us(theirs, torch.cuda.synchronize)
            row["torch_graph_us"] = torch_us(theirs)
            for prec in ops.PRECISIONS:
                ops.DEFAULT_PRECISION = prec
                row[f"cupy_eager_us_{prec}"] = eager_us(ours, cp.cuda.Device().synchronize)
                try:
                    row[f"cupy_graph_us_{prec}"] = cupy_us(ours, stream)
                except Exception as exc:  # report, don't lose the other numbers
                    row[f"cupy_graph_us_{prec}"] = f"capture failed: {exc}"
            ops.DEFAULT_PRECISION = "3xtf32"
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
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if not all(r["ok"] for r in rows):
        raise SystemExit("some kernels disagree with torch: see FAIL above")


if __name__ == "__main__":
    main()
