"""Pictures of who does what: GPU-Puzzles-style figures that the lessons reuse.

Everything here is plain numpy + matplotlib (no CUDA), so it draws the same in the simulator and on a GPU.
Each function returns the matplotlib ``Figure`` (and draws into ``ax`` when you pass one).

* ``thread_map(owner_block, owner_thread=None, title=None, launch=None)``
      One cell per output element, coloured by the block that wrote it and labelled with the thread id.
      ``owner_block`` / ``owner_thread`` are int arrays shaped like the output (1-D or 2-D); -1 means
      "no thread wrote this element" (drawn grey, which is how a missing element or a bad guard shows up).
      Record them with a kernel that writes ``cuda.blockIdx.x`` / ``cuda.threadIdx.x`` instead of data.
      With ``launch=(blocks, threads)`` a 1-D map also draws the launched threads that land past the end of
      the array (greyed, labelled): the ones the guard ``if i < n`` keeps out.
* ``access_pattern(addresses, n_memory=None, segment=None, title=None, row_labels=None)``
      Which memory address each thread touches, one row per step (a loop iteration, a warp, a load):
      ``addresses[step, thread]`` is an element index, -1 for "this thread is idle". Cells are coloured by
      thread; with ``segment=k`` thick lines mark k-element segments and each row says how many it touches
      (``segments_touched`` gives the same numbers without drawing).
* ``roofline(peak_flops, peak_bandwidth, points=None, title=None)``
      The roofline: attainable FLOP/s = min(peak_flops, intensity * peak_bandwidth) on log-log axes, with
      kernels placed at ``points = {name: (flops_per_byte, achieved_flops_per_s)}``.
* ``show_images(images, titles=None)``
      A row of images (H, W), (H, W, 3) in [0, 1]; for before/after pictures of image kernels.

``block_colours(owner_block)``, ``thread_colour(t)`` and ``guarded_colour(block)`` are the palettes the figures
use (tests check them).
"""

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.ticker import MaxNLocator

UNWRITTEN = to_rgba("0.85")  # grey: an element no thread wrote / an idle thread
GUARDED_OUT = -3  # thread_map's mark for a launched thread past the end of the array
BACKGROUND = to_rgba("white")  # memory nobody touched
_PALETTE = [to_rgba(c) for c in plt.get_cmap("tab20").colors]
_PALETTE = _PALETTE[0::2] + _PALETTE[1::2]  # strong colours first, then their light partners
_ANNOTATE_MAX = 640  # label cells with thread ids only while the text stays readable


def thread_colour(t):
    """The RGBA colour of block (or thread) number ``t``; -1 (nobody) is grey. Colours repeat after 20."""
    t = int(t)
    return UNWRITTEN if t < 0 else _PALETTE[t % len(_PALETTE)]


def block_colours(owner_block):
    """An RGBA image (..., 4) colouring every element by the block that wrote it (grey where -1)."""
    owner_block = np.asarray(owner_block)
    out = np.empty(owner_block.shape + (4,))
    for block in np.unique(owner_block):
        out[owner_block == block] = thread_colour(block)
    return out


def _as_grid(values, wrap, fill):
    """1-D arrays become rows of ``wrap`` cells (the tail padded with ``fill``); 2-D arrays stay as they are."""
    values = np.asarray(values)
    if values.ndim == 2:
        return values
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D or 2-D array of owners, got shape {values.shape}")
    rows = max(1, math.ceil(values.size / wrap))
    grid = np.full(rows * wrap, fill, dtype=values.dtype)
    grid[: values.size] = values
    return grid.reshape(rows, wrap)


def _new_axes(ax, rows, cols, scale=0.42):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(
        figsize=(min(max(cols * scale, 3.0), 16.0), min(max(rows * scale, 1.2), 12.0) + 0.8)
    )
    return fig, ax


def _cell_grid(ax, rows, cols):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)


def guarded_colour(block):
    """A thread past the end of the array: its block's colour, greyed."""
    return tuple(0.3 * np.asarray(thread_colour(block)) + 0.7 * np.asarray(UNWRITTEN))


def _past_the_end(n, launch):
    """Block and thread of each launched thread that lands past element n-1 (one per element or grid-stride)."""
    blocks, threads = launch
    total = blocks * threads
    i = np.arange(n, math.ceil(n / total) * total) % total  # the global thread index of each such slot
    return i // threads, i % threads


def thread_map(owner_block, owner_thread=None, title=None, ax=None, wrap=None, annotate=None, launch=None):
    """Colour each output element by the block that wrote it; label it with the thread id.

    owner_block, owner_thread: int arrays shaped like the output, -1 where no thread wrote.
    wrap: cells per row when the arrays are 1-D (default: all of them up to 32, else 32).
    annotate: print thread ids in the cells (default: when there are at most 640 cells).
    launch: (blocks, threads) of a 1-D launch: also draw, greyed and labelled, the threads past the end of the
            array, which the guard keeps out (global thread ``i`` handles element ``i``, then ``i + total``...).
    """
    owner_block = np.asarray(owner_block)
    if owner_thread is not None:
        owner_thread = np.asarray(owner_thread)
        if owner_thread.shape != owner_block.shape:
            raise ValueError(f"owner_thread has shape {owner_thread.shape}, owner_block {owner_block.shape}")
    one_d = owner_block.ndim == 1
    n = owner_block.size
    guarded_blocks = np.empty(0, dtype=int)
    if launch is not None:
        if not one_d:
            raise ValueError(
                f"launch= draws the threads past the end of a 1-D array; got shape {owner_block.shape}"
            )
        guarded_blocks, guarded_threads = _past_the_end(n, launch)
        owner_block = np.concatenate([owner_block, np.full(guarded_blocks.size, GUARDED_OUT)])
        if owner_thread is not None:
            owner_thread = np.concatenate([owner_thread, guarded_threads])
    wrap = wrap or (owner_block.size if owner_block.size <= 32 else 32)
    blocks = _as_grid(owner_block, wrap, -2)  # -2: padding past the end of a 1-D array
    rows, cols = blocks.shape
    rgba = block_colours(blocks)
    rgba[blocks == -2] = BACKGROUND
    for k, block in enumerate(guarded_blocks):
        rgba[(n + k) // wrap, (n + k) % wrap] = guarded_colour(block)
    fig, ax = _new_axes(ax, rows, cols)
    ax.imshow(rgba, interpolation="nearest", aspect="equal")
    _cell_grid(ax, rows, cols)
    if annotate is None:
        annotate = blocks.size <= _ANNOTATE_MAX
    if annotate:
        labels = blocks if owner_thread is None else _as_grid(owner_thread, wrap, -2)
        size = 8 if cols <= 32 else 6
        for (r, c), label in np.ndenumerate(labels):
            if blocks[r, c] == -2:
                continue
            past = blocks[r, c] == GUARDED_OUT
            text = "–" if blocks[r, c] == -1 else str(int(label))
            ax.text(c, r, text, ha="center", va="center", fontsize=size, color="0.45" if past else "black")
    if guarded_blocks.size:  # a thick line where the array ends
        r, c = divmod(n - 1, wrap)
        ax.plot([c + 0.5, c + 0.5], [r - 0.5, r + 0.5], color="black", linewidth=3)
    if one_d:
        ax.set_xlabel(f"element i = {wrap} × row + column" if rows > 1 else "element i")
        ax.set_yticks(range(rows), [str(r * wrap) for r in range(rows)])
    else:
        ax.set_xlabel("column (x)")
        ax.set_ylabel("row (y)")
    count = launch[0] if launch else len([b for b in np.unique(blocks) if b >= 0])
    subtitle = f"colour = block ({count} blocks), number = thread" if owner_thread is not None else ""
    past = (
        f"greyed, past the thick line: threads with i ≥ {n}, kept out by the guard"
        if guarded_blocks.size
        else ""
    )
    ax.set_title("\n".join(filter(None, [title, subtitle, past])), fontsize=10)
    return fig


def segments_touched(addresses, segment):
    """For each row of ``addresses`` (step, thread), how many ``segment``-element segments it touches."""
    addresses = np.atleast_2d(np.asarray(addresses))
    return [len({int(a) // segment for a in row if a >= 0}) for row in addresses]


def access_pattern(
    addresses, n_memory=None, segment=None, title=None, ax=None, annotate=None, row_labels=None
):
    """Draw which memory address each thread touches, one row per step, coloured by thread.

    addresses: int array (steps, threads) or (threads,) of element indices; -1 = idle thread.
    n_memory: how many memory cells to draw (default: up to the largest address).
    row_labels: a name per row (default: the step number).
    segment: draw segment boundaries every ``segment`` elements and count the segments each row touches
             (32 float32 = 128 bytes, or 8 = one 32-byte sector, is what the memory system moves at once).
    """
    addresses = np.atleast_2d(np.asarray(addresses))
    if addresses.ndim != 2:
        raise ValueError(f"addresses must be (steps, threads) or (threads,), got shape {addresses.shape}")
    n_memory = n_memory or int(addresses.max()) + 1
    steps = addresses.shape[0]
    owner = np.full((steps, n_memory), -1)
    count = np.zeros((steps, n_memory), dtype=int)
    for (s, t), a in np.ndenumerate(addresses):
        if 0 <= a < n_memory:
            if owner[s, a] < 0:
                owner[s, a] = t
            count[s, a] += 1
    rgba = block_colours(owner)
    rgba[owner < 0] = BACKGROUND
    fig, ax = _new_axes(ax, steps, n_memory)
    ax.imshow(rgba, interpolation="nearest", aspect="equal")
    _cell_grid(ax, steps, n_memory)
    ax.grid(which="minor", color="0.8", linewidth=0.5)
    if annotate is None:
        annotate = owner.size <= _ANNOTATE_MAX
    if annotate:
        for (s, a), t in np.ndenumerate(owner):
            if t >= 0:
                text = str(t) if count[s, a] == 1 else f"{t}+{count[s, a] - 1}"
                ax.text(a, s, text, ha="center", va="center", fontsize=7)
    if segment:
        for edge in range(0, n_memory + 1, segment):
            ax.axvline(edge - 0.5, color="black", linewidth=2)
        for s, k in enumerate(segments_touched(addresses, segment)):
            ax.text(n_memory - 0.3, s, f"  {k} seg", va="center", ha="left", fontsize=8)
    ax.set_xlabel("memory address (element index)")
    if row_labels is None:
        ax.set_ylabel("step")
        ax.set_yticks(range(steps))
    else:
        ax.set_yticks(range(steps), list(row_labels))
    ax.set_title("\n".join(filter(None, [title, "colour / number = thread"])), fontsize=10)
    return fig


def attainable(intensity, peak_flops, peak_bandwidth):
    """The roofline: the FLOP/s a kernel of ``intensity`` FLOP/byte can reach at best."""
    return np.minimum(peak_flops, np.asarray(intensity, dtype=float) * peak_bandwidth)


def roofline(peak_flops, peak_bandwidth, points=None, title=None, ax=None):
    """Log-log roofline with the ridge point marked and kernels placed at (FLOP/byte, achieved FLOP/s)."""
    if peak_flops <= 0 or peak_bandwidth <= 0:
        raise ValueError(
            f"peaks must be positive, got peak_flops={peak_flops}, peak_bandwidth={peak_bandwidth}"
        )
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4.2))
    ridge = peak_flops / peak_bandwidth
    intensities = [p[0] for p in (points or {}).values()]
    lo = min([ridge / 100, *intensities]) / 2
    hi = max([ridge * 100, *intensities]) * 2
    xs = np.geomspace(lo, hi, 400)
    ax.loglog(xs, attainable(xs, peak_flops, peak_bandwidth), color="black", linewidth=2, label="roof")
    ax.axvline(ridge, color="0.6", linestyle=":", linewidth=1)
    ax.annotate(f"ridge {ridge:.3g} FLOP/B", (ridge, peak_flops), textcoords="offset points", xytext=(4, -14))
    ax.text(lo * 1.5, peak_flops / 1.6, "memory-bound ←", fontsize=8, color="0.4")
    ax.text(ridge * 1.5, peak_flops / 3, "→ compute-bound", fontsize=8, color="0.4")
    for i, (name, (intensity, achieved)) in enumerate((points or {}).items()):
        ax.loglog([intensity], [achieved], "o", color=thread_colour(i), markersize=8, label=name)
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(
        title or f"roofline: {peak_flops / 1e12:.3g} TFLOP/s, {peak_bandwidth / 1e12:.3g} TB/s", fontsize=10
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def show_images(images, titles=None, size=2.6):
    """A row of images: (H, W) in grey or (H, W, 3) RGB, values in [0, 1] (clipped)."""
    images = list(images)
    titles = list(titles) if titles is not None else [None] * len(images)
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), squeeze=False)
    for ax, img, name in zip(axes[0], images, titles, strict=True):
        img = np.clip(np.asarray(img, dtype=float), 0.0, 1.0)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name or "", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return fig
