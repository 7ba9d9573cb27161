"""minisd.profile (``python -m minisd profile``): every op call of a sampling step timed once, its bytes and
FLOPs counted right (FLOPs against torch.utils.flop_counter on the torch UNet), the table, the roofline PNG and
the command line. On numpy here; on a GPU also Numba and CuPy. Times are never compared with a number: only
that every call has one and that they add up to the step. (The Numba backend is not profiled in the
simulator: one step of even the tiny test UNet takes minutes there. Its arrays are counted below.)"""

import collections
import contextlib
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import minisd.mode as mode
from minisd import files, kernel_backend
from minisd import profile as prof
from minisd.__main__ import main
from minisd.architecture import default_config
from minisd.ceilings import Ceilings
from minisd.forward import Forward
from minisd.model import MiniSD
from minisd.ops import Ops, numpy_ops
from minisd.ops.harness import assert_close
from minisd.pipeline import DEFAULT_STEPS, MiniSDPipeline, Sampler

ROOFS = Ceilings("test roofs", 20e9, {"float32": 100e9}, {"bandwidth": "made up", "float32": "made up"})
UNET_OPS = {
    "conv2d",
    "linear",
    "attention",
    "group_norm",
    "layer_norm",
    "linear_geglu",
    "concat_channels",
    "to_tokens",
    "from_tokens",
}
GUIDANCE_OPS = {"concat_batch", "cfg_combine"}  # only with guidance: the rows doubled, then combined


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MiniSD(default_config()).eval()


def pipeline(model, backend, precision=None):
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return MiniSDPipeline(state, model.config, backend=backend, log=lambda *a: None, precision=precision)


@pytest.fixture(scope="module")
def pipe(model):
    return pipeline(model, "numpy")


@pytest.fixture(scope="module", params=[(1, 1.5), (3, 1.0)], ids=["batch1-guided", "batch3-unguided"])
def report(request, pipe):
    batch, guidance = request.param
    return prof.profile(pipe, batch, guidance, repeats=2, ceilings=ROOFS)


class KernelCounter:
    """numpy's kernels, each call counted by name: what the step runs, seen below the op layer."""

    def __init__(self):
        self.calls = collections.Counter()

    def __getattr__(self, name):
        kernel = getattr(numpy_ops, name)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return kernel(*args, **kwargs)

        return counted


def test_every_op_call_of_the_step_is_timed_once(pipe, report):
    kernels = KernelCounter()
    ops = Ops("numpy", kernels=kernels)
    plan = pipe.plan(report.batch, DEFAULT_STEPS, report.guidance)
    prof._first_step(pipe, plan)(Sampler(ops, Forward(ops, pipe.net.p, pipe.arch)))
    ran = collections.Counter(c.op for c in report.calls)
    assert set(ran) == UNET_OPS | {"scheduler_step"} | (GUIDANCE_OPS if report.guidance != 1 else set())
    # concat_batch is one channel concatenation, no kernel of its own; the ops that stand for two (the
    # fused ones of the half path) run both kernels here: linear_geglu, and conv2d's upsample and add
    ran["concat_channels"] += ran.pop("concat_batch", 0)
    ran["linear"] += ran["linear_geglu"]
    ran["geglu"] += ran.pop("linear_geglu")
    unet = pipe.arch.unet
    ran["upsample_nearest2x"] = sum(block.sampler is not None for block in unet.up)  # conv2d(upsample=True)
    ran["add"] = sum(len(block.resnets) for block in unet.blocks)  # each ResNet's time embedding
    assert ran == kernels.calls
    assert report.rows == report.batch * (2 if report.guidance != 1 else 1)


def test_shares_add_up_to_the_step_and_the_table_lists_every_op(report):
    rows = prof.by_op(report)
    assert {r["op"] for r in rows} == {c.op for c in report.calls}
    assert sum(r["calls"] for r in rows) == len(report.calls)
    assert all(c.seconds > 0 for c in report.calls) and report.between_s >= 0
    in_ops = sum(r["share_percent"] for r in rows)
    assert in_ops + 100 * report.between_s / report.step_s == pytest.approx(100)
    assert in_ops > 50, "the ops should hold nearly all of a numpy step's time, not the Python between them"
    assert [r["seconds"] for r in rows] == sorted((r["seconds"] for r in rows), reverse=True)
    text = prof.table(report)
    lines = text.splitlines()
    for r in rows:
        assert any(line.split()[:2] == [r["op"], str(r["calls"])] for line in lines), r["op"]
    assert any(line.startswith("(between ops)") for line in lines)
    assert any(line.split()[:2] == ["step", str(len(report.calls))] for line in lines)
    assert "10 slowest calls" in text and "roofs (recorded on test roofs)" in text


def test_each_op_is_judged_against_the_roof_at_its_intensity(report):
    peak, bandwidth = ROOFS.matmul["float32"], ROOFS.bandwidth
    for r in prof.by_op(report):
        intensity = r["flops"] / r["bytes"]
        if r["flops"]:  # against the roofline at that intensity
            roof = min(peak, intensity * bandwidth)
            assert r["roof_percent"] == pytest.approx(100 * r["flops"] / r["seconds"] / roof), r["op"]
        else:
            assert r["roof_percent"] == pytest.approx(100 * r["bytes"] / r["seconds"] / bandwidth), r["op"]
        assert r["bound"] == ("compute" if intensity > peak / bandwidth else "memory"), r["op"]
    assert {r["op"]: r["bound"] for r in prof.by_op(report)}["conv2d"] == "compute"
    assert {r["op"]: r["bound"] for r in prof.by_op(report)}["group_norm"] == "memory"


def test_flops_match_torch_flop_counter(model, report):
    """conv2d, linear and attention against torch's own count of the same UNet on as many rows, less what
    minisd computes once per run instead of each step (time embedding, each ResNet's time_emb_proj, the
    prompt's cross-attention keys and values); minisd's transformers end in a 1x1 conv, torch's in a linear."""
    rows, te, unet = report.rows, default_config()["text_encoder"], default_config()["unet"]
    assert (unet["in_channels"], unet["sample_size"]) == (4, 16), "the UNet runs on 4x16x16 latents"
    x, t = torch.randn(rows, 4, 16, 16), torch.full((rows,), 999.0)
    context = torch.randn(rows, te["max_length"], te["hidden_size"])
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model.unet(x, t, context)  # MATH: attention as two batched products, which the counter sees
    counts = counter.get_flop_counts()
    kinds = {str(k): v for k, v in counts["Global"].items()}
    once = (".time_embedding", ".time_emb_proj", ".attn2.to_k", ".attn2.to_v")
    hoisted = sum(sum(v.values()) for k, v in counts.items() if k.endswith(once))
    ours = collections.Counter()
    for c in report.calls:
        ours[c.op] += c.flops
    proj_out = sum(sum(v.values()) for k, v in counts.items() if k.endswith(".proj_out"))
    assert ours["conv2d"] == kinds["aten.convolution"] + proj_out  # minisd runs proj_out as a 1x1 conv
    assert (
        ours["linear"] + ours["linear_geglu"] == kinds["aten.addmm"] + kinds["aten.mm"] - hoisted - proj_out
    )
    assert ours["attention"] == kinds["aten.bmm"]
    assert round(counter.get_total_flops() / rows / 1e9, 2) == 0.67  # GFLOP a row, as recorded


def test_bytes_count_each_array_once_at_its_own_itemsize(gen):
    n, c, o, h, w = 2, 3, 5, 7, 6
    x = gen.standard_normal((n, c, h, w)).astype(np.float16)
    weight = gen.standard_normal((o, c, 3, 2)).astype(np.float16)
    bias = np.zeros(o, np.float16)
    residual, out = np.zeros((2, n, o, h - 2, w - 1), np.float16)
    call = prof.count("conv2d", (x, weight, bias, 1, 0), {"residual": residual}, out)
    assert call.bytes == 2 * (x.size + weight.size + bias.size + residual.size + out.size)
    assert call.flops == 2 * n * o * (h - 2) * (w - 1) * c * 3 * 2
    assert call.dtype == "float16" and call.label == "2x3x7x6 5x3x3x2 2x5x5x5 -> 2x5x5x5"
    q, k = (torch.zeros(2, 3, lq, 4, dtype=torch.bfloat16) for lq in (5, 9))  # (B, H, L, D)
    call = prof.count("attention", (q, k, k.clone()), {}, torch.zeros_like(q))
    assert call.flops == 4 * 2 * 3 * 5 * 9 * 4 and call.bytes == 2 * (2 * q.numel() + 2 * k.numel())
    assert call.dtype == "bfloat16"
    a = np.zeros((4, 3), np.float32)
    call = prof.count("add", (a, a), {}, a + 1)
    assert call.bytes == 4 * 2 * a.size and call.flops == a.size
    call = prof.count("group_norm", (x, 1, None, None), {"silu": True}, x)
    assert call.flops == (prof.PER_ELEMENT["group_norm"] + prof.SILU) * x.size


def test_timed_ops_pass_everything_through(gen):
    ops, record = Ops("numpy"), []
    timed = prof.TimedOps(ops, prof.HostClock(), record)
    assert timed.backend == "numpy" and timed.kernels is ops.kernels
    a = gen.standard_normal((2, 3, 4, 5)).astype(np.float32)
    both = timed.concat_batch(a, a)
    np.testing.assert_array_equal(both, np.concatenate([a, a]))
    assert [call.op for call, *_ in record] == ["concat_batch"]  # its concat_channels is part of it
    with pytest.raises(ValueError, match="must have the same shape"):  # the ops' own errors come through
        timed.concat_batch(a, a[:1])
    assert len(record) == 1


def test_timed_ops_count_numba_device_arrays(numba_ops_poisoned, gen):
    ops, record = Ops("numba"), []
    timed = prof.TimedOps(ops, prof.HostClock(), record)
    x, weight, bias = (gen.standard_normal(s).astype(np.float32) for s in ((3, 5), (5,), (5,)))
    out = timed.layer_norm(*(ops.to_device(v) for v in (x, weight, bias)))
    x64, weight64, bias64 = (torch.from_numpy(v).double() for v in (x, weight, bias))
    ref = torch.nn.functional.layer_norm(x64, (5,), weight64, bias64)
    assert_close(ops.to_numpy(out), ref, 2e-6, "layer_norm through TimedOps")
    ((call, _, _),) = record
    assert call.bytes == 4 * (2 * x.size + weight.size + bias.size)
    assert call.shapes == ((3, 5),) and call.out == (3, 5) and call.dtype == "float32"


class FakeCuda:
    """numba.cuda as GpuClock uses it, on a pretend GPU whose every event lands 1 us after the one before."""

    def __init__(self, spin_ended):
        self.now, self.syncs, self.streams, self.spin_ended = 0.0, 0, set(), spin_ended

    def event(self):
        return FakeEvent(self)

    def event_elapsed_time(self, a, b):
        return (b.at - a.at) * 1e3

    def to_device(self, a):
        return a

    def defer_cleanup(self):
        return contextlib.nullcontext()


class FakeEvent:
    def __init__(self, cuda):
        self.cuda = cuda

    def record(self, stream=0):
        self.cuda.now += 1e-6
        self.at = self.cuda.now
        self.cuda.streams.add(stream)

    def query(self):
        return self.cuda.spin_ended

    def synchronize(self):
        self.cuda.syncs += 1


@pytest.mark.parametrize("spin_ended", [False, True])
def test_gpu_clock_holds_the_stream_every_segment(monkeypatch, spin_ended):
    fake, spins = FakeCuda(spin_ended), []
    monkeypatch.setattr(kernel_backend, "cuda", fake)
    monkeypatch.setattr(prof.GpuClock, "_spin", lambda self, n: spins.append(n))
    monkeypatch.setattr(prof, "SEGMENT", 2)
    clock = prof.GpuClock("the ops' stream", hold_s=1e-3)
    assert spins == [1000, 1 << 20] and fake.syncs == 1  # compile, then calibrate: 1 us for 2^20 turns
    spins.clear()
    ops = Ops("numpy")
    sampler = SimpleNamespace(ops=ops, net=SimpleNamespace(ops=ops))
    a = np.ones(3, np.float32)
    calls, between = prof._time_step(sampler, clock, lambda s: [s.net.ops.add(a, a) for _ in range(5)])
    assert len(calls) == 5 and all(c.seconds == pytest.approx(1e-6) for c in calls)  # start to stop
    assert spins == [round(1e-3 / (1e-6 / (1 << 20)))] * 3  # segments of 2, 2 and 1 calls, each held 1 ms
    assert fake.syncs == 1 + 3 and fake.streams == {"the ops' stream"}
    assert between == pytest.approx(2e-6)  # inside a segment, between a stop and the next start
    assert clock.gaps == (3 if spin_ended else 0)


def test_roofline_png_is_a_png(report, tmp_path):
    path = prof.roofline_png(report, tmp_path / "roofline.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1080, 720)
        assert len(np.unique(np.asarray(image.convert("L")))) > 10, "a chart, not a blank page"
    assert not files.leftovers(tmp_path)


def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib... now raises ImportError


def test_without_matplotlib_the_png_is_a_clear_message(report, tmp_path, monkeypatch):
    no_matplotlib(monkeypatch)
    with pytest.raises(prof.NeedsMatplotlib, match=r"needs matplotlib: pip install -e '\.\[course\]'"):
        prof.roofline_png(report, tmp_path / "roofline.png")
    assert not list(tmp_path.iterdir())


def profile_cli(*args):
    return main(["profile", "--backend", "numpy", "--repeats", "1", *map(str, args)])


def test_cli_prints_the_table_and_writes_png_and_json(tmp_path, capsys):
    png, first, second = tmp_path / "r.png", tmp_path / "first.json", tmp_path / "second.json"
    assert profile_cli("--png", png, "--json", first) == 0
    out = capsys.readouterr().out
    assert out.startswith("profiling one sampling step at batch 1, numpy on the CPU")
    assert "roofs (measured now)" in out and f"wrote {png}" in out and f"wrote {first}" in out
    report = json.loads(first.read_text())
    assert {r["op"] for r in report["ops"]} >= UNET_OPS and len(report["slowest"]) == 10
    assert report["settings"] == {
        "backend": "numpy",
        "batch": 1,
        "rows": 2,
        "guidance": 1.5,
        "dtype": "float32",
        "repeats": 1,
        "timer": "time.perf_counter",
    }
    assert sum(c["flops"] for c in report["calls"]) == report["step"]["flops"]
    roofs = report["ceilings"]
    assert roofs["bandwidth"] > 0 and roofs["matmul"]["float32"] > 0
    with Image.open(png) as image:
        assert image.format == "PNG"
    # its roofs again, from the file: not measured a second time
    assert profile_cli("--png", png, "--json", second, "--ceilings", first) == 0
    assert f"roofs (recorded on {roofs['device']})" in capsys.readouterr().out
    assert json.loads(second.read_text())["ceilings"] == roofs


def test_cli_without_matplotlib_still_prints_the_table(tmp_path, capsys, monkeypatch):
    no_matplotlib(monkeypatch)
    roofs = tmp_path / "roofs.json"
    roofs.write_text(json.dumps(ROOFS.to_json()))
    assert profile_cli("--png", tmp_path / "r.png", "--ceilings", roofs) == 0
    out = capsys.readouterr().out
    assert "10 slowest calls" in out and f"no {tmp_path / 'r.png'}: the roofline PNG needs matplotlib" in out
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--batch", "0"], 2, "--batch must be at least 1, got 0"),
        (["--batch", "1025"], 2, "--batch must be at most 1024"),
        (["--repeats", "0"], 2, "--repeats must be at least 1"),
        (["--guidance", "nan"], 2, "--guidance must be a number from 0 to 100"),
        (["--png", "TMP/roofline.jpg"], 2, "--png must name a .png file"),
        (
            ["--json", "TMP/missing/p.json"],
            2,
            "--json TMP/missing/p.json: the folder TMP/missing does not exist",
        ),
        (["--ceilings", "TMP/none.json"], 1, "--ceilings: cannot read TMP/none.json: No such file"),
        (["--ceilings", "TMP/notes.txt"], 1, "--ceilings: TMP/notes.txt is not JSON"),
        (["--ceilings", "TMP/partial.json"], 1, "must hold device, bandwidth and matmul"),
        (["--ceilings", "TMP/negative.json"], 1, "bandwidth must be a positive number, got -1"),
        (["--weights", ""], 2, "--weights is empty"),
    ],
)
def test_cli_bad_arguments_are_one_clear_line(args, code, message, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not JSON\n")
    (tmp_path / "partial.json").write_text('{"device": "x"}')
    (tmp_path / "negative.json").write_text(json.dumps({**ROOFS.to_json(), "bandwidth": -1}))
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_:
        profile_cli(*args)
    err = capsys.readouterr().err
    assert exit_.value.code == code and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and message.replace("TMP", str(tmp_path)) in err


@pytest.mark.skipif(mode.ON_GPU, reason="no GPU: the GPU backends must refuse")
@pytest.mark.parametrize("backend", ["numba", "cupy"])
def test_cli_gpu_backends_without_a_gpu_are_a_clear_error(backend, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--backend", backend])
    assert exit_.value.code == 2 and f"backend '{backend}' needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not mode.ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["numba", "cupy"])
def test_gpu_profile_counts_what_numpy_counts(model, pipe, backend):
    """On the GPU: CUDA events time every call, the spin held the stream, and the calls, bytes and FLOPs are
    the numpy path's (the same float32 arrays: CuPy in fp32). Whether the spin outlasted the CPU's queueing
    (``gaps``) depends on how busy the host is, so it is reported, not asserted."""
    if backend == "cupy" and not mode.has_cupy():
        pytest.skip("needs CuPy")
    gpu = prof.profile(pipeline(model, backend, precision="fp32"), 2, 1.5, repeats=2)
    cpu = prof.profile(pipe, 2, 1.5, repeats=1, ceilings=ROOFS)
    assert gpu.timer == "CUDA events" and gpu.device == mode.gpu_name()
    assert [(c.op, c.shapes, c.out, c.bytes, c.flops) for c in gpu.calls] == [
        (c.op, c.shapes, c.out, c.bytes, c.flops) for c in cpu.calls
    ]
    assert all(c.seconds > 0 for c in gpu.calls) and gpu.between_s >= 0
    assert gpu.ceilings.matmul["float32"] > 1e12 and gpu.ceilings.bandwidth > 1e11  # any GPU of this decade


@pytest.mark.gpu
@pytest.mark.skipif(not mode.has_cupy(), reason="needs a CUDA GPU and CuPy")
def test_gpu_profile_of_the_half_path(model):
    """bf16: the fused ops are timed (GEGLU and every transformer LayerNorm inside the products), their bytes
    at 2 bytes a value, against the bf16 matmul roof."""
    report = prof.profile(pipeline(model, "cupy", precision="bf16"), 2, 1.5, repeats=2)
    ops = {c.op for c in report.calls}
    assert {"layer_norm_linear", "self_attention", "conv2d", "group_norm"} <= ops
    assert not ops & {"geglu", "linear_geglu", "layer_norm"}
    assert report.dtype == "bfloat16"
    assert all(c.seconds > 0 for c in report.calls)
