"""``python -m minisd profile``: where one denoising step's time goes, op by op, against this machine's roofs.

    report = profile(pipe, batch=64)          # one sampling step after warm-up (minisd.pipeline.Sampler.step)
    print(table(report))                      # time by op: share of the step, GB/s, TFLOP/s, % of its roof
    roofline_png(report, "minisd-profile.png")

Every op call of the step goes through ``TimedOps``, a stand-in for the ops object the network holds
(``pipe.net.ops``: minisd.ops.Ops, or any object with the same methods), so the forward pass runs unchanged.
On the CPU a call is timed with time.perf_counter: numpy has computed when it returns. On the GPU, with CUDA
events before and after the call on the stream the ops launch on. But launches are asynchronous, and an eager
step at a small batch is launch-bound (the CPU takes longer to launch a kernel than the GPU to run it), so
events around a call would time the CPU's launch, not the kernel. The stream is therefore held by a spinning
one-thread kernel while the CPU queues the next SEGMENT calls; then the GPU runs them back to back, as it
replays a CUDA graph, and the events time the kernels. If the spin ends before the CPU has queued them all,
the step is timed again with a longer spin (the report counts segments that still ran out).

What a call counts, from its arrays' shapes and .nbytes (so a half-precision array counts half):
* bytes: every distinct array argument read once and the result written once, the least any kernel moves;
* FLOPs, a multiply-add counted as 2 (as torch.utils.flop_counter counts them): conv2d 2·N·O·Ho·Wo·C·kh·kw
  (the output's size times weight's size over its first axis, O); linear and layer_norm_linear 2·M·N·K (GEGLU: N = 2F);
  attention and self_attention 4·B·H·Lq·Lk·D (q·kᵀ and p·v; the softmax is not counted); norms and pointwise ops a few per output element
  (PER_ELEMENT, rough: their roof is bandwidth anyway); data movement (concat, tokens, upsample) none.
"""

import copy
import datetime
import functools
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

import minisd.mode as mode
from minisd import ceilings as roofs
from minisd.files import atomic_open
from minisd.forward import one_hot_tokens
from minisd.pipeline import DEFAULT_GUIDANCE, DEFAULT_PROMPT, DEFAULT_STEPS, host_threads
from minisd.text import tokenize

# calls queued behind one spin: a few hundred launches and events, well inside the queue CUDA keeps
SEGMENT = 64
MATRIX_OPS = (
    "conv2d",
    "linear",
    "linear_geglu",
    "layer_norm_linear",
    "attention",
    "self_attention",
)  # their dtype picks the roof
HALF_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # a pipeline's precision (bf16 arrays are uint16 bits)
PER_ELEMENT = {  # FLOPs per output element
    "group_norm": 7,  # statistics (sum, sum of squares) 3, normalise 2, scale and shift 2; fused SiLU + SILU
    "layer_norm": 7,
    "softmax": 5,  # max, subtract, exp, sum, divide
    "silu": 4,  # x / (1 + exp(-x))
    "gelu": 8,  # erf as a short polynomial
    "geglu": 9,  # a * gelu(b)
    "add": 1,
    "scale_add": 3,
    "cfg_combine": 3,  # u + g * (c - u)
    "scheduler_step": 8,  # x0 = (x - b * eps) * s, clipped; c_x0 * x0 + c_eps * eps (+ c_sample * x)
}
SILU = 4
COUNTING = {  # the module's docstring, for the JSON
    "bytes": "each distinct array argument read once + the result written once",
    "flops": "a multiply-add is 2",
    "conv2d": "2*N*O*Ho*Wo*C*kh*kw",
    "linear": "2*M*N*K",
    "attention": "4*B*H*Lq*Lk*D (softmax not counted)",
    "per output element": {**PER_ELEMENT, "group_norm with fused SiLU": PER_ELEMENT["group_norm"] + SILU},
}
TOP = 10  # slowest calls listed
SHAPE_ONLY = ("image_size",)  # methods that read a shape and run nothing: not timed


# ------------------------------------------------------------------------------------------ one op call


@dataclass
class Call:
    op: str
    shapes: tuple  # the array arguments' shapes, vectors (biases, norm weights) left out
    out: tuple  # the result's shape
    dtype: str  # of the first array argument
    bytes: int
    flops: int
    seconds: float = 0.0

    @property
    def label(self):
        return " ".join("x".join(map(str, s)) for s in self.shapes) + " -> " + "x".join(map(str, self.out))


def _is_array(v):
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def _nbytes(a):
    n = getattr(a, "nbytes", None)
    return int(n) if n is not None else math.prod(a.shape) * a.dtype.itemsize


def _arrays(values):
    """The arrays among ``values``; a tuple of arrays (the half path's ChannelConcat) counts as its parts."""
    for v in values:
        if _is_array(v):
            yield v
        elif isinstance(v, tuple):
            yield from (a for a in v if _is_array(a))


def count(op, args, kwargs, out):
    """The Call of ``op(*args, **kwargs) -> out``, untimed: its shapes, dtype, bytes and FLOPs."""
    inputs = list({id(a): a for a in _arrays((*args, *kwargs.values()))}.values())
    results = list(_arrays(out if isinstance(out, list) else (out,)))
    size = sum(math.prod(r.shape) for r in results)
    if op == "conv2d":  # the weight's size over its first axis (O): C*kh*kw in either layout
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        flops = 2 * size * math.prod(weight.shape[1:])
    elif op == "linear":
        flops = 2 * size * inputs[0].shape[-1]
    elif op == "linear_geglu":  # the product, 2F wide (the GEGLU after it, like a softmax, not counted)
        flops = 4 * inputs[0].shape[-1] * size
    elif op == "layer_norm_linear":  # the product (GEGLU: 2F wide); the folded LayerNorm not counted
        flops = (4 if kwargs.get("geglu") else 2) * inputs[0].shape[-1] * size
    elif op == "attention":
        flops = 4 * math.prod(inputs[0].shape) * inputs[1].shape[-2]
    elif op == "self_attention":  # (B, L, 3*H*D) in, (B, L, H*D) out
        flops = 4 * size * inputs[0].shape[1]
    else:
        flops = (PER_ELEMENT.get(op, 0) + SILU * (op == "group_norm" and bool(kwargs.get("silu")))) * size
    shapes = tuple(tuple(int(d) for d in a.shape) for a in inputs if len(a.shape) > 1)
    out_shape = tuple(int(d) for d in results[0].shape) if results else ()
    dtype = str(inputs[0].dtype).removeprefix("torch.") if inputs else ""
    return Call(op, shapes, out_shape, dtype, sum(map(_nbytes, inputs + results)), int(flops))


class TimedOps:
    """``ops`` (any object) with every public method call timed by ``clock`` and appended to ``record`` as
    (Call, clock token, seconds spent counting it); everything else passes through, so code written for
    ``ops`` runs unchanged. A call an op makes to another method of its own object is part of that op."""

    def __init__(self, ops, clock, record):
        self._ops, self._clock, self._record = ops, clock, record

    def __getattr__(self, name):  # only for names TimedOps itself lacks: every attribute of ops
        value = getattr(self._ops, name)
        if name.startswith("_") or not callable(value) or name in SHAPE_ONLY:
            return value

        def timed(*args, **kwargs):
            token = self._clock.start()
            out = value(*args, **kwargs)
            token = self._clock.stop(token)
            counting = time.perf_counter()  # the profiler's own time, taken out of the step's on the CPU
            call = count(name, args, kwargs, out)
            self._record.append((call, token, time.perf_counter() - counting))
            return out

        return timed

    def __repr__(self):
        return f"TimedOps({self._ops!r})"


# ----------------------------------------------------------------------------------------------- clocks


class HostClock:
    """time.perf_counter: a CPU backend has computed a call when it returns."""

    gaps = 0
    on_host = True  # the step's time includes the host's: less the profiler's own counting

    def step(self, run):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    def start(self):
        return time.perf_counter()

    def stop(self, start):
        return start, time.perf_counter()

    def seconds(self, token):
        return token[1] - token[0]


@functools.cache
def _spin_kernel():
    from minisd.kernel_backend import cuda, float32

    @cuda.jit
    def spin(n, out):
        """A chain of n dependent multiply-adds on one thread: it keeps the stream busy (out defeats the
        compiler, which would drop a loop whose result nobody reads)."""
        x = out[0]
        for _ in range(n):
            x = x * float32(0.5) + float32(1.0)
        out[0] = x

    return spin


class GpuClock:
    """CUDA events around each call on ``stream`` (a Numba stream, or 0 for the default stream), the stream
    held by a spin of ``hold_s`` seconds before every SEGMENT calls (the module's docstring says why)."""

    on_host = False

    def __init__(self, stream, hold_s=1e-3):
        from minisd.kernel_backend import cuda

        self.cuda, self.stream, self.hold_s, self.gaps = cuda, stream, hold_s, 0
        self._out = cuda.to_device(np.zeros(1, np.float32))
        self._spin(1000)  # compiles
        n = 1 << 20
        begin = self._event()
        self._spin(n)
        end = self._event()
        end.synchronize()
        self._spin_s = cuda.event_elapsed_time(begin, end) * 1e-3 / n  # seconds per iteration
        self._segment = None

    def _spin(self, n):
        _spin_kernel()[1, 1, self.stream](n, self._out)

    def _event(self):
        event = self.cuda.event()
        event.record(stream=self.stream)
        return event

    def step(self, run):
        """Run ``run`` (which calls start and stop) and return the seconds the GPU spent on its calls' segments."""
        self._spans, self._segment, self.gaps = [], None, 0
        with self.cuda.defer_cleanup():  # Numba frees memory with a device sync: not inside a segment
            run()
        if self._segment is not None:
            self._close()
        return sum(self.cuda.event_elapsed_time(a, b) for a, b in self._spans) * 1e-3

    def start(self):
        if self._segment is None:
            self._spin(max(1, round(self.hold_s / self._spin_s)))
            self._segment = {"held": self._event(), "first": None, "calls": 0}
        event = self._event()
        if self._segment["first"] is None:
            self._segment["first"] = event
        return event

    def stop(self, start):
        end = self._event()
        self._segment["last"] = end
        self._segment["calls"] += 1
        if self._segment["calls"] == SEGMENT:
            self._close()
        return start, end

    def _close(self):
        s, self._segment = self._segment, None
        self.gaps += s["held"].query()  # the spin had ended: the GPU may have waited for launches
        s["last"].synchronize()
        self._spans.append((s["first"], s["last"]))

    def seconds(self, token):
        return self.cuda.event_elapsed_time(*token) * 1e-3


def _stream_of(backend):
    """The Numba stream (0: the default stream) that ``backend``'s ops launch on now."""
    from minisd.kernel_backend import cuda

    if backend == "cupy":
        import cupy as cp

        ptr = cp.cuda.get_current_stream().ptr
        return cuda.external_stream(ptr) if ptr else 0
    from minisd.ops import get_stream

    return get_stream()


# ----------------------------------------------------------------------------------------------- profile


@dataclass
class Report:
    backend: str
    device: str
    batch: int
    rows: int  # UNet rows: 2 x batch with guidance
    guidance: float
    dtype: str  # of the matrix ops' inputs: picks the matmul roof
    ceilings: roofs.Ceilings
    roofs_origin: str  # "measured now" or "recorded on <device>"
    calls: list  # Call, in the order they ran, each the median of the timed steps
    between_s: float  # step time outside every call (Python between ops; on the GPU, gaps between kernels)
    eager_step_s: float  # the step as sampling runs it eagerly, host clock (launch overhead included)
    repeats: int
    timer: str  # "CUDA events" or "time.perf_counter"
    gaps: int = 0  # segments whose spin ran out (GPU): their calls' times may include launch gaps
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())

    @property
    def step_s(self):
        return sum(c.seconds for c in self.calls) + self.between_s


def _timed(sampler, clock, record):
    """A shallow copy of ``sampler`` whose ops and network ops (the same object, or two) are timed."""
    proxies = {}

    def wrap(ops):
        return proxies.setdefault(id(ops), TimedOps(ops, clock, record))

    net = copy.copy(sampler.net)
    net.ops = wrap(sampler.net.ops)
    timed = copy.copy(sampler)
    timed.ops, timed.net = wrap(sampler.ops), net
    return timed


def _time_step(sampler, clock, step):
    """(calls with their seconds, seconds outside them) of one step."""
    record = []
    total = clock.step(lambda: step(_timed(sampler, clock, record)))
    calls = [replace(call, seconds=clock.seconds(token)) for call, token, _ in record]
    ours = sum(spent for *_, spent in record) if clock.on_host else 0.0
    return calls, total - sum(c.seconds for c in calls) - ours


def profile(pipe, batch=1, guidance=DEFAULT_GUIDANCE, repeats=3, ceilings=None):
    """Time every op call of one sampling step of ``pipe`` (a minisd.pipeline.MiniSDPipeline) at ``batch``
    images, ``repeats`` times after warm-up; ``ceilings`` (minisd.ceilings.Ceilings) are measured if None."""
    plan = pipe.plan(batch, DEFAULT_STEPS, guidance)
    on_gpu = mode.ON_GPU and pipe.backend != "numpy"
    sync = _synchronize if on_gpu else _nothing
    with host_threads(pipe.backend):
        step = _first_step(pipe, plan)
        for _ in range(2):  # the first compiles and loads the kernels and fills the memory pool
            step(pipe.sampler)
        eager = statistics.median(_wall(lambda: step(pipe.sampler), sync) for _ in range(repeats))
        origin = "measured now" if ceilings is None else f"recorded on {ceilings.device}"
        ceilings = ceilings or roofs.measure(pipe.backend)
        clock = HostClock()
        if on_gpu:  # spin long enough for the CPU to queue SEGMENT calls (timed ones), twice over
            record = []
            per_call = _wall(lambda: step(_timed(pipe.sampler, HostClock(), record)), sync) / len(record)
            clock = GpuClock(_stream_of(pipe.backend), hold_s=2 * SEGMENT * per_call + 1e-3)
        for _ in range(3):  # a spin that ran out is 4x longer next time
            runs = [_time_step(pipe.sampler, clock, step) + (clock.gaps,) for _ in range(repeats)]
            gaps = sum(r[2] for r in runs)
            if not gaps:
                break
            clock.hold_s *= 4
    calls = _median_calls([r[0] for r in runs])
    return Report(
        backend=pipe.backend,
        device=mode.gpu_name() if on_gpu else roofs.host_name(),
        batch=batch,
        rows=plan.rows,
        guidance=plan.guidance_scale,
        dtype=HALF_DTYPES.get(getattr(pipe, "precision", None))
        or next((c.dtype for c in calls if c.op in MATRIX_OPS), "float32"),
        ceilings=ceilings,
        roofs_origin=origin,
        calls=calls,
        between_s=statistics.median(r[1] for r in runs),
        eager_step_s=eager,
        repeats=repeats,
        timer="CUDA events" if on_gpu else "time.perf_counter",
        gaps=gaps,
    )


def _first_step(pipe, plan):
    """``step(sampler)``: the plan's first sampling step on the default prompt, its inputs made once."""
    ops = pipe.sampler.ops
    rows = plan.prompt_rows([DEFAULT_PROMPT] * plan.batch)
    one_hot = ops.to_device(one_hot_tokens(tokenize(rows), pipe.arch.text_encoder.vocab_size))
    state = pipe.sampler.prologue(one_hot, ops.to_device(plan.timestep_rows()), plan)
    x = ops.randn(plan.noise_shape(pipe.arch.unet.in_channels), 0)

    def step(sampler):
        sampler.step(0, x, state, plan)

    return step


def _synchronize():
    from minisd.kernel_backend import cuda

    cuda.synchronize()


def _nothing():
    pass


def _wall(run, sync):
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def _median_calls(runs):
    ops = [c.op for c in runs[0]]
    for calls in runs[1:]:
        if [c.op for c in calls] != ops:
            raise RuntimeError("the timed steps ran different ops: a step must run the same calls every time")
    return [replace(c, seconds=statistics.median(r[i].seconds for r in runs)) for i, c in enumerate(runs[0])]


# ----------------------------------------------------------------------------------------- the numbers


def place(name, calls, seconds, nbytes, flops, report):
    """A row: time, share of the step, achieved GB/s and TFLOP/s, arithmetic intensity, and the roof that
    bounds it (memory below the ridge, matmul above) with the percentage of that roof reached."""
    peak, _ = report.ceilings.compute(report.dtype)
    bandwidth = report.ceilings.bandwidth
    seconds = max(seconds, 1e-12)
    intensity = flops / nbytes if nbytes else math.inf
    bound = "compute" if intensity * bandwidth >= peak else "memory"
    percent = 100 * (flops / seconds / peak if bound == "compute" else nbytes / seconds / bandwidth)
    return {
        "op": name,
        "calls": calls,
        "seconds": seconds,
        "share_percent": 100 * seconds / report.step_s,
        "bytes": nbytes,
        "flops": flops,
        "GB_per_s": nbytes / seconds / 1e9,
        "TFLOP_per_s": flops / seconds / 1e12,
        "flop_per_byte": intensity,
        "bound": bound,
        "roof_percent": percent,
    }


def by_op(report):
    """One row per op, the most time first."""
    totals = {}
    for c in report.calls:
        t = totals.setdefault(c.op, [0, 0.0, 0, 0])
        t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + c.seconds, t[2] + c.bytes, t[3] + c.flops
    rows = [place(op, *t, report) for op, t in totals.items()]
    return sorted(rows, key=lambda r: -r["seconds"])


def step_row(report):
    """The whole step as one row: its share is 100 %, its roof percentage is of the matmul peak."""
    nbytes, flops = sum(c.bytes for c in report.calls), sum(c.flops for c in report.calls)
    row = place("step", len(report.calls), report.step_s, nbytes, flops, report)
    peak, _ = report.ceilings.compute(report.dtype)
    return {**row, "roof_percent": 100 * flops / report.step_s / peak}


def slowest(report, n=TOP):
    """The ``n`` slowest calls, each a row with its shapes."""
    calls = sorted(report.calls, key=lambda c: -c.seconds)[:n]
    return [{**place(c.op, 1, c.seconds, c.bytes, c.flops, report), "shapes": c.label} for c in calls]


def _us(seconds):
    return f"{seconds * 1e6:10.1f}"


def _line(label, width, r, calls=True):
    return (
        f"{label:<{width}} {r['calls'] if calls else '':>5} {_us(r['seconds'])} {r['share_percent']:7.1f} {r['GB_per_s']:9.1f} "
        f"{r['TFLOP_per_s']:8.3f} {r['flop_per_byte']:7.1f}  {r['bound']:<7} {r['roof_percent']:6.1f}"
    )


def table(report):
    """The report as text: the roofs, time by op, the whole step, the slowest calls."""
    c = report.ceilings
    peak, dtype = c.compute(report.dtype)
    guided = f"guidance {report.guidance:g}"
    lines = [
        f"one sampling step, batch {report.batch} ({report.rows} UNet rows, {guided}), {report.backend} on "
        f"{report.device}, {report.dtype}: {report.step_s * 1e3:.3f} ms (median of {report.repeats})",
        f"roofs ({report.roofs_origin}): copy {c.bandwidth / 1e9:.1f} GB/s ({c.how.get('bandwidth', '')}); "
        f"{dtype} matmul {peak / 1e12:.3f} TFLOP/s ({c.how.get(dtype, '')}"
        f"{'' if dtype == report.dtype else f'; no {report.dtype} roof measured'}); ridge "
        f"{c.ridge(report.dtype):.1f} FLOP/byte",
        "",
    ]
    rows = by_op(report)
    width = max(20, *(len(r["op"]) for r in rows))
    head = f"{'op':<{width}} {'calls':>5} {'total us':>10} {'share %':>7} {'GB/s':>9} {'TFLOP/s':>8} "
    lines += [head + f"{'FLOP/B':>7}  {'bound':<7} {'% roof':>6}", "-" * (len(head) + 23)]
    lines += [_line(r["op"], width, r) for r in rows]
    between = 100 * report.between_s / report.step_s
    lines.append(f"{'(between ops)':<{width}} {'':>5} {_us(report.between_s)} {between:7.1f}")
    total = step_row(report)
    lines += ["-" * (len(head) + 23), _line("step", width, total) + f"  (of the {dtype} matmul peak)", ""]
    top = slowest(report)
    width = max(len(r["op"]) + 1 + len(r["shapes"]) for r in top)
    lines.append(
        f"{f'{len(top)} slowest calls':<{width}} {'':>5} {'us':>10} {'share %':>7} {'GB/s':>9} "
        f"{'TFLOP/s':>8} {'FLOP/B':>7}  {'bound':<7} {'% roof':>6}"
    )
    lines += [_line(f"{r['op']} {r['shapes']}", width, r, calls=False) for r in top]
    if report.timer == "CUDA events":
        lines += [
            "",
            f"eager, as the sampling loop launches it from Python (host clock): {report.eager_step_s * 1e3:.3f} ms "
            f"a step; its kernels take {100 * report.step_s / report.eager_step_s:.0f} % of that (CUDA graphs "
            "remove the rest: minisd/cuda_graphs.py)",
        ]
    if report.gaps:
        lines.append(
            f"warning: in {report.gaps} segments the GPU caught up with the CPU: times include launch gaps"
        )
    return "\n".join(lines)


def to_json(report):
    """Everything measured, for benchmarks/: settings, roofs, rows by op, the step, every call."""
    return {
        "device": report.device,
        "date": report.date,
        "settings": {
            "backend": report.backend,
            "batch": report.batch,
            "rows": report.rows,
            "guidance": report.guidance,
            "dtype": report.dtype,
            "repeats": report.repeats,
            "timer": report.timer,
        },
        "ceilings": report.ceilings.to_json(),
        "ceilings_origin": report.roofs_origin,
        "counting": COUNTING,
        "step": step_row(report),
        "between_ops_s": report.between_s,
        "eager_step_s": report.eager_step_s,
        "segments_with_launch_gaps": report.gaps,
        "ops": by_op(report),
        "slowest": slowest(report),
        "calls": [{**asdict(c), "shapes": c.label} for c in report.calls],
    }


# ------------------------------------------------------------------------------------------ roofline


class NeedsMatplotlib(RuntimeError):
    pass


def roofline_png(report, path):
    """Log-log roofline: achieved TFLOP/s against FLOP/byte, the two roofs as lines, a point per op with
    FLOPs (its area ~ its share of the step)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NeedsMatplotlib(
            "the roofline PNG needs matplotlib: pip install -e '.[course]' (the table above has it all)"
        ) from None
    c = report.ceilings
    peak, dtype = c.compute(report.dtype)
    rows = [r for r in by_op(report) if r["flops"]]
    lowest = min([r["flop_per_byte"] for r in rows] + [c.ridge(report.dtype)]) / 4
    highest = max([r["flop_per_byte"] for r in rows] + [c.ridge(report.dtype)]) * 8
    x = np.geomspace(lowest, highest, 200)
    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.loglog(x, np.minimum(x * c.bandwidth, peak) / 1e12, color="black")
    ax.loglog(
        x, x * c.bandwidth / 1e12, color="grey", linestyle=":", label=f"copy {c.bandwidth / 1e9:.1f} GB/s"
    )
    ax.axhline(peak / 1e12, color="grey", linestyle="--", label=f"{dtype} matmul {peak / 1e12:.3g} TFLOP/s")
    for r in rows:
        ax.scatter(r["flop_per_byte"], r["TFLOP_per_s"], s=20 + 20 * r["share_percent"], alpha=0.6)
        ax.annotate(
            f"{r['op']} {r['share_percent']:.0f} %",
            (r["flop_per_byte"], r["TFLOP_per_s"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    moves = [f"{r['op']} {r['share_percent']:.0f} %" for r in by_op(report) if not r["flops"]]
    if moves:
        ax.text(0.01, 0.01, "no FLOPs, not plotted: " + ", ".join(moves), transform=ax.transAxes, fontsize=7)
    ax.set_xlim(lowest, highest)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(
        f"minisd, one sampling step: batch {report.batch} ({report.rows} rows), {report.backend}, "
        f"{report.dtype}\n{report.device}, {report.step_s * 1e3:.3f} ms",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=120)
    return path
