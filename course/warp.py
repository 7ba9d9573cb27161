"""Warp shuffles and votes that run on a GPU AND in Numba's CUDA simulator (which has none).

Use them in a kernel exactly like Numba's intrinsics::

    from course import warp

    @cuda.jit
    def warp_sum(x, out):
        v = x[cuda.grid(1)]
        offset = 16
        while offset > 0:
            v += warp.shfl_down_sync(warp.FULL_MASK, v, offset)
            offset //= 2
        ...

On a GPU every name below IS Numba's intrinsic (``warp.shfl_down_sync is cuda.shfl_down_sync``), so there is
no cost. In the simulator they are Python functions with the real (PTX ``shfl.sync`` / ``vote.sync``)
semantics. Importing this module also installs them into the simulator's in-kernel ``cuda`` namespace, so
``cuda.shfl_down_sync(...)`` works in simulated kernels too.

What the simulator reproduces:

* ``mask`` names the lanes taking part. The call is a barrier among them: a lane waits until every lane named
  in ``mask`` that exists and has not exited has called the same function with the same mask.
* Lane numbers are the thread's linear index in the block modulo 32 (x fastest), so a block of 40 threads has
  a full warp 0 and a partial warp 1 of 8 lanes; lanes that do not exist count as exited.
* Source lanes follow PTX: ``delta``/``src_lane``/``lane_mask`` use their low 5 bits; ``shfl_up_sync`` below
  lane 0 and ``shfl_down_sync``/``shfl_xor_sync`` past lane 31 return the caller's own value;
  ``shfl_sync`` reads lane ``src_lane % 32``.
* Reading a lane that is not taking part (not in ``mask``, exited, or not existing) is undefined on a GPU:
  the simulator returns a poison value (NaN for floats, 0xDEADBEEF for ints) so the mistake shows up.
* Mistakes that hang or corrupt a real GPU raise a clear error instead: the caller's bit missing from
  ``mask``, lanes of one mask calling different functions, a lane waiting in ``cuda.syncthreads()`` or under
  another mask while others wait for it in a shuffle.
* Values must be 32- or 64-bit ints or floats, as in Numba.

``ballot_sync`` returns a signed 32-bit int like Numba's (lane 31 set makes it negative).

The ``*_w`` functions add CUDA C++'s ``width`` argument (a power of two, 1..32): the warp is cut into
segments of ``width`` lanes and each segment shuffles on its own. They are device functions built on
``shfl_sync``, identical on GPU and simulator. ``source_lane`` is the PTX rule itself, usable on the host.

Not supported in the simulator (use them only in kernels that run on a GPU): ``cuda.syncwarp``,
``cuda.activemask``, ``cuda.lanemask_lt``, ``cuda.match_any_sync``/``match_all_sync``. Nor is lockstep
execution modelled: code that relies on a warp's lanes staying in step (warp-synchronous shared memory
without ``syncwarp``) may pass here and race on a GPU — ``compute-sanitizer --tool racecheck`` finds it.
"""

import threading

import numpy as np

import minisd.mode as mode
from minisd.kernel_backend import cuda

FULL_MASK = 0xFFFFFFFF
WARP_SIZE = 32

# PTX shfl.sync modes and the `c` operand Numba passes (clamp in bits 0-4, segment mask in bits 8-12).
IDX, UP, DOWN, BFLY = 0, 1, 2, 3
NUMBA_C = {IDX: 0x1F, UP: 0x00, DOWN: 0x1F, BFLY: 0x1F}
_NAMES = {IDX: "shfl_sync", UP: "shfl_up_sync", DOWN: "shfl_down_sync", BFLY: "shfl_xor_sync"}


def width_c(mode_, width):
    """The PTX ``c`` operand CUDA C++ uses for a shuffle of ``width`` lanes (what ``__shfl_*_sync`` passes)."""
    if width not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"width must be a power of two from 1 to 32, got {width}")
    return ((WARP_SIZE - width) << 8) | (0 if mode_ == UP else 0x1F)


def source_lane(mode_, lane, b, c):
    """Which lane ``lane`` reads in a PTX ``shfl.sync`` (``mode_`` in IDX/UP/DOWN/BFLY): its own when out of range."""
    bval = b & 0x1F
    clamp = c & 0x1F
    segmask = (c >> 8) & 0x1F
    min_lane = lane & segmask
    max_lane = min_lane | (clamp & ~segmask)
    if mode_ == UP:
        j = lane - bval
        ok = j >= max_lane
    elif mode_ == DOWN:
        j = lane + bval
        ok = j <= max_lane
    elif mode_ == BFLY:
        j = lane ^ bval
        ok = j <= max_lane
    elif mode_ == IDX:
        j = min_lane | (bval & ~segmask)
        ok = j <= max_lane
    else:
        raise ValueError(f"unknown shuffle mode {mode_}")
    return j if ok else lane


# ---------------------------------------------------------------------------------------------------------
# The simulator's warp: a rendezvous of the lanes named in a mask.
# ---------------------------------------------------------------------------------------------------------

_SHUFFLE_TYPES = (int, float, np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64)
_POISON_INT = 0xDEADBEEF
_registry_lock = threading.Lock()
_POLL_S = 0.02


def _poison_like(value):
    if isinstance(value, float | np.floating):
        return type(value)(np.nan)
    if isinstance(value, np.integer):
        return np.array([_POISON_INT], dtype=np.uint64).astype(value.dtype)[0]
    return _POISON_INT - (1 << 32)  # a Python int: the int32 bit pattern 0xDEADBEEF


class _Round:
    """One call of a warp function by the lanes of one mask."""

    def __init__(self, kind, mask):
        self.kind = kind
        self.mask = mask
        self.arrivals = {}  # lane -> (value, b)
        self.results = None


class _Warp:
    def __init__(self, manager, warp_index):
        self.cond = threading.Condition()
        self.manager = manager
        self.base = warp_index * WARP_SIZE
        block_size = int(np.prod(manager._block_dim))
        self.present = [self.base + lane < block_size for lane in range(WARP_SIZE)]
        self.rounds = {}  # mask -> open _Round
        self.waiting = {}  # lane -> _Round it waits in

    def thread(self, lane):
        return getattr(self.manager, "_course_threads", {}).get(self.base + lane)

    def exited(self, lane):
        if not self.present[lane]:
            return True
        t = self.thread(lane)
        return t is not None and getattr(t, "_course_exited", False)

    def expected(self, mask):
        return [lane for lane in range(WARP_SIZE) if mask >> lane & 1 and not self.exited(lane)]

    def try_complete(self, rnd):
        """Finish ``rnd`` if every lane it waits for has arrived (or exited). Call with ``cond`` held."""
        if rnd.results is not None or any(lane not in rnd.arrivals for lane in self.expected(rnd.mask)):
            return
        rnd.results = {lane: rnd.kind.compute(lane, rnd) for lane in rnd.arrivals}
        del self.rounds[rnd.mask]
        self.cond.notify_all()

    def check_deadlock(self, lane, rnd):
        for other in self.expected(rnd.mask):
            if other in rnd.arrivals:
                continue
            t = self.thread(other)
            where = self.waiting.get(other)
            if t is not None and t.syncthreads_blocked:
                raise RuntimeError(
                    f"deadlock: lane {lane} waits in {rnd.kind.name}(mask={rnd.mask:#010x}) for lane {other}, "
                    f"which waits in cuda.syncthreads(). Every lane named in the mask must reach the same "
                    f"warp function before any of them goes on to a barrier."
                )
            if where is not None and where is not rnd and where.results is None and where.mask >> lane & 1:
                raise RuntimeError(
                    f"deadlock: lane {lane} waits in {rnd.kind.name}(mask={rnd.mask:#010x}) for lane {other}, "
                    f"which waits in {where.kind.name}(mask={where.mask:#010x}) for lane {lane}. All lanes "
                    f"named in a mask must call the same warp function with the same mask."
                )

    def arrive(self, me, lane, kind, mask, value, b):
        with self.cond:
            rnd = self.rounds.get(mask)
            if rnd is None:
                rnd = self.rounds[mask] = _Round(kind, mask)
            elif rnd.kind is not kind:
                first = min(rnd.arrivals)
                raise RuntimeError(
                    f"lanes of one warp called different warp functions with mask {mask:#010x}: lane {first} "
                    f"called {rnd.kind.name}, lane {lane} called {kind.name} (undefined on a GPU)"
                )
            rnd.arrivals[lane] = (value, b)
            self.waiting[lane] = rnd
            self.try_complete(rnd)
            while rnd.results is None:
                self.cond.wait(_POLL_S)
                if me.abort:
                    raise RuntimeError("another thread of the block failed")
                self.try_complete(rnd)
                if rnd.results is None:
                    self.check_deadlock(lane, rnd)
            del self.waiting[lane]
            return rnd.results[lane]

    def lane_exited(self):
        with self.cond:
            for rnd in list(self.rounds.values()):
                self.try_complete(rnd)
            self.cond.notify_all()


class _Shuffle:
    def __init__(self, mode_):
        self.mode = mode_
        self.name = _NAMES[mode_]

    def compute(self, lane, rnd):
        value, b = rnd.arrivals[lane]
        j = source_lane(self.mode, lane, b, NUMBA_C[self.mode])
        if j in rnd.arrivals:
            return rnd.arrivals[j][0]
        return _poison_like(value)  # the source lane is not taking part: undefined on a GPU


class _Vote:
    def __init__(self, name, reduce):
        self.name = name
        self.reduce = reduce

    def compute(self, lane, rnd):
        ballot = sum(1 << j for j, (pred, _) in rnd.arrivals.items() if pred)
        return self.reduce(ballot, sum(1 << j for j in rnd.arrivals))


def _signed32(x):
    return x - (1 << 32) if x >= 1 << 31 else x


_KINDS = {m: _Shuffle(m) for m in _NAMES}
_BALLOT = _Vote("ballot_sync", lambda ballot, members: _signed32(ballot))
_ALL = _Vote("all_sync", lambda ballot, members: ballot == members)
_ANY = _Vote("any_sync", lambda ballot, members: ballot != 0)
_EQ = _Vote("eq_sync", lambda ballot, members: ballot in (0, members))


def _warp_of(me):
    manager = me._manager
    with _registry_lock:
        warps = manager.__dict__.setdefault("_course_warps", {})
        index = me.thread_id // WARP_SIZE
        if index not in warps:
            warps[index] = _Warp(manager, index)
        return warps[index]


def _call(kind, mask, value, b):
    me = threading.current_thread()
    if not hasattr(me, "_manager") or not hasattr(me, "thread_id"):
        raise RuntimeError(f"{kind.name} can only be called inside a kernel running in the CUDA simulator")
    mask = int(mask) & FULL_MASK
    lane = me.thread_id % WARP_SIZE
    if not mask >> lane & 1:
        raise RuntimeError(
            f"{kind.name}: lane {lane} (thread {tuple(me.threadIdx)}) called it with mask {mask:#010x}, "
            f"which does not include its own lane: every calling lane must be in the mask"
        )
    return _warp_of(me).arrive(me, lane, kind, mask, value, int(b))


def _check_value(name, value):
    if isinstance(value, bool | np.bool_) or not isinstance(value, _SHUFFLE_TYPES):
        raise TypeError(
            f"{name} shuffles 32- and 64-bit ints and floats only (as Numba does), got {type(value).__name__}"
        )


def _sim_shfl(mode_):
    kind = _KINDS[mode_]

    def shuffle(mask, value, b):
        _check_value(kind.name, value)
        return _call(kind, mask, value, b)

    shuffle.__name__ = kind.name
    return shuffle


def _sim_vote(kind):
    def vote(mask, predicate):
        return _call(kind, mask, bool(predicate), 0)

    vote.__name__ = kind.name
    return vote


def _sim_popc(val):
    """cuda.popc that also counts the bits of a negative (two's complement) 32- or 64-bit int, as a GPU does."""
    val = int(val)
    if val < 0:
        val &= FULL_MASK if val >= -(1 << 31) else (1 << 64) - 1
    return bin(val).count("1")


def _install_into_simulator():
    """Give the simulator's in-kernel ``cuda`` the warp functions, and make its threads report when they end."""
    from numba.cuda.simulator import kernel, kernelapi  # numba-cuda's own: numba-cuda-mlir has no simulator

    fake = kernelapi.FakeCUDAModule
    if getattr(fake, "_course_warp_installed", False):
        return
    for name, fn in _SIM_FUNCTIONS.items():
        setattr(fake, name, staticmethod(fn))
    fake.popc = staticmethod(_sim_popc)

    block_thread = kernel.BlockThread
    original_init, original_run = block_thread.__init__, block_thread.run

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        with _registry_lock:
            self._manager.__dict__.setdefault("_course_threads", {})[self.thread_id] = self

    def run(self):
        try:
            original_run(self)
        finally:
            self._course_exited = True
            warp = getattr(self._manager, "_course_warps", {}).get(self.thread_id // WARP_SIZE)
            if warp is not None:
                warp.lane_exited()

    block_thread.__init__ = init
    block_thread.run = run
    fake._course_warp_installed = True


_SIM_FUNCTIONS = {
    "shfl_sync": _sim_shfl(IDX),
    "shfl_up_sync": _sim_shfl(UP),
    "shfl_down_sync": _sim_shfl(DOWN),
    "shfl_xor_sync": _sim_shfl(BFLY),
    "ballot_sync": _sim_vote(_BALLOT),
    "all_sync": _sim_vote(_ALL),
    "any_sync": _sim_vote(_ANY),
    "eq_sync": _sim_vote(_EQ),
}

if mode.ON_GPU:
    shfl_sync = cuda.shfl_sync
    shfl_up_sync = cuda.shfl_up_sync
    shfl_down_sync = cuda.shfl_down_sync
    shfl_xor_sync = cuda.shfl_xor_sync
    ballot_sync = cuda.ballot_sync
    all_sync = cuda.all_sync
    any_sync = cuda.any_sync
    eq_sync = cuda.eq_sync
else:
    _install_into_simulator()
    shfl_sync = _SIM_FUNCTIONS["shfl_sync"]
    shfl_up_sync = _SIM_FUNCTIONS["shfl_up_sync"]
    shfl_down_sync = _SIM_FUNCTIONS["shfl_down_sync"]
    shfl_xor_sync = _SIM_FUNCTIONS["shfl_xor_sync"]
    ballot_sync = _SIM_FUNCTIONS["ballot_sync"]
    all_sync = _SIM_FUNCTIONS["all_sync"]
    any_sync = _SIM_FUNCTIONS["any_sync"]
    eq_sync = _SIM_FUNCTIONS["eq_sync"]


# ---------------------------------------------------------------------------------------------------------
# CUDA C++'s width argument, built on shfl_sync (one code path for GPU and simulator).
# ---------------------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def shfl_sync_w(mask, value, src_lane, width):
    """``__shfl_sync(mask, value, src_lane, width)``: read lane ``src_lane % width`` of my segment."""
    lane = cuda.laneid
    return cuda.shfl_sync(mask, value, (lane & ~(width - 1)) | (src_lane & (width - 1)))


@cuda.jit(device=True)
def shfl_up_sync_w(mask, value, delta, width):
    """``__shfl_up_sync(mask, value, delta, width)``: lane - delta, or my own value below my segment."""
    lane = cuda.laneid
    j = lane - (delta & 31)
    if j < (lane & ~(width - 1)):
        j = lane
    return cuda.shfl_sync(mask, value, j)


@cuda.jit(device=True)
def shfl_down_sync_w(mask, value, delta, width):
    """``__shfl_down_sync(mask, value, delta, width)``: lane + delta, or my own value past my segment."""
    lane = cuda.laneid
    j = lane + (delta & 31)
    if j > (lane | (width - 1)):
        j = lane
    return cuda.shfl_sync(mask, value, j)


@cuda.jit(device=True)
def shfl_xor_sync_w(mask, value, lane_mask, width):
    """``__shfl_xor_sync(mask, value, lane_mask, width)``: lane ^ lane_mask, or my own value past my segment."""
    lane = cuda.laneid
    j = lane ^ (lane_mask & 31)
    if j > (lane | (width - 1)):
        j = lane
    return cuda.shfl_sync(mask, value, j)
