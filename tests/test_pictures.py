"""course.pictures draws what it is given: render the figures and read the colours back, cell by cell."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from course import pictures  # noqa: E402


def _rendered_cells(fig, rows, cols, offset=0.3):
    """The RGB colour of every cell as drawn, sampled ``offset`` of a cell up-left of its centre (off the label)."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    ax = fig.axes[0]
    height = pixels.shape[0]
    out = np.empty((rows, cols, 3))
    for r in range(rows):
        for c in range(cols):
            x, y = ax.transData.transform((c - offset, r - offset))
            out[r, c] = pixels[int(round(height - y)), int(round(x))]
    plt.close(fig)
    return out


def _rgb(colour):
    return np.asarray(colour[:3])


@pytest.mark.parametrize("annotate", [False, True])
def test_thread_map_colours_each_element_by_its_block(annotate):
    # a ragged 2-D launch: 7 x 10 outputs, 4 x 4 threads per block, blocks numbered by = 0..1, bx = 0..2
    rows, cols = 7, 10
    r, c = np.mgrid[:rows, :cols]
    owner_block = (r // 4) * 3 + c // 4
    owner_thread = (r % 4) * 4 + c % 4
    owner_block[6, 9] = -1  # one element nobody wrote
    fig = pictures.thread_map(owner_block, owner_thread, title="known", annotate=annotate)
    drawn = _rendered_cells(fig, rows, cols)
    for (i, j), block in np.ndenumerate(owner_block):
        np.testing.assert_allclose(
            drawn[i, j], _rgb(pictures.thread_colour(block)), atol=0.02, err_msg=f"{i, j}"
        )
    np.testing.assert_allclose(drawn[6, 9], _rgb(pictures.UNWRITTEN), atol=0.02)


def test_thread_map_wraps_1d_arrays_and_leaves_the_tail_blank():
    n, threads = 13, 4
    owner_block, owner_thread = np.arange(n) // threads, np.arange(n) % threads
    fig = pictures.thread_map(owner_block, owner_thread, wrap=5)
    drawn = _rendered_cells(fig, 3, 5)
    for i in range(n):
        np.testing.assert_allclose(
            drawn[i // 5, i % 5], _rgb(pictures.thread_colour(i // threads)), atol=0.02
        )
    np.testing.assert_allclose(drawn[2, 4], _rgb(pictures.BACKGROUND), atol=0.02)  # past the end: no cell


@pytest.mark.parametrize(
    "launch, past",  # past: (block, thread) of each launched thread beyond element 12
    [
        ((4, 4), [(3, 1), (3, 2), (3, 3)]),  # one thread per element: block 3 sticks out
        ((2, 4), [(1, 1), (1, 2), (1, 3)]),  # grid-stride: the second pass over 8..15 runs out at 13
        ((5, 4), [(3, 1), (3, 2), (3, 3), (4, 0), (4, 1), (4, 2), (4, 3)]),  # a whole block with no element
    ],
)
def test_thread_map_draws_the_threads_past_the_end_greyed_and_labelled(launch, past):
    n, (blocks, threads) = 13, launch
    i = np.arange(n) % (blocks * threads)
    fig = pictures.thread_map(i // threads, i % threads, launch=launch, wrap=24)
    labels = {(round(t.get_position()[0]), round(t.get_position()[1])): t for t in fig.axes[0].texts}
    assert "i ≥ 13" in fig.axes[0].get_title()
    drawn = _rendered_cells(fig, 1, 24)
    for k in range(n):
        np.testing.assert_allclose(drawn[0, k], _rgb(pictures.thread_colour(i[k] // threads)), atol=0.02)
    for k, (block, thread) in enumerate(past, start=n):
        colour = _rgb(pictures.guarded_colour(block))
        # greyed: neither the block's own colour nor the grey of "nobody wrote this element"
        assert np.abs(colour - _rgb(pictures.thread_colour(block))).max() > 0.1
        assert np.abs(colour - _rgb(pictures.UNWRITTEN)).max() > 0.02
        np.testing.assert_allclose(drawn[0, k], colour, atol=0.02, err_msg=f"slot {k}")
        assert labels[k, 0].get_text() == str(thread), f"slot {k}"
    beyond = drawn[0, n + len(past)]  # no thread of the launch: nothing drawn
    np.testing.assert_allclose(beyond, _rgb(pictures.BACKGROUND), atol=0.02)


def test_thread_map_launch_is_for_1d_maps():
    with pytest.raises(ValueError, match="1-D"):
        pictures.thread_map(np.zeros((2, 3), int), np.zeros((2, 3), int), launch=(1, 8))


def test_block_colours_are_distinct_per_block_and_grey_for_unwritten():
    owner = np.array([[0, 0, 1], [2, -1, 1]])
    rgba = pictures.block_colours(owner)
    assert rgba.shape == (2, 3, 4)
    np.testing.assert_array_equal(rgba[0, 0], rgba[0, 1])
    assert len({tuple(rgba[0, 0]), tuple(rgba[0, 2]), tuple(rgba[1, 0])}) == 3
    np.testing.assert_array_equal(rgba[1, 1], pictures.UNWRITTEN)


def test_thread_map_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="owner_thread has shape"):
        pictures.thread_map(np.zeros(5, int), np.zeros(6, int))


def test_access_pattern_colours_addresses_by_thread_and_counts_segments():
    coalesced = np.arange(8)
    strided = np.arange(8) * 4
    addresses = np.stack([coalesced, strided])
    addresses[1, 7] = -1  # an idle thread touches nothing
    fig = pictures.access_pattern(addresses, n_memory=32, segment=8, annotate=False)
    drawn = _rendered_cells(fig, 2, 32, offset=0.0)
    for (step, thread), address in np.ndenumerate(addresses):
        if address >= 0:
            np.testing.assert_allclose(drawn[step, address], _rgb(pictures.thread_colour(thread)), atol=0.02)
    np.testing.assert_allclose(drawn[1, 28], _rgb(pictures.BACKGROUND), atol=0.02)  # the idle thread's slot
    assert pictures.segments_touched(addresses, 8) == [1, 4]
    assert pictures.segments_touched(addresses, 32) == [1, 1]


def test_roofline_has_the_right_ridge_and_rejects_bad_peaks():
    np.testing.assert_allclose(pictures.attainable([1.0, 100.0], 50e12, 2e12), [2e12, 50e12])
    fig = pictures.roofline(50e12, 2e12, {"saxpy": (1 / 6, 0.3e12)})
    roof = fig.axes[0].lines[0]
    xs, ys = roof.get_data()
    assert ys.max() == pytest.approx(50e12)
    knee = xs[np.argmax(ys >= 50e12)]
    assert knee == pytest.approx(25.0, rel=0.05)
    plt.close(fig)
    with pytest.raises(ValueError, match="positive"):
        pictures.roofline(0, 2e12)


def test_show_images_draws_one_panel_per_image():
    fig = pictures.show_images([np.zeros((4, 5)), np.ones((4, 5, 3))], ["grey", "rgb"])
    assert [ax.get_title() for ax in fig.axes] == ["grey", "rgb"]
    plt.close(fig)
