"""Binned counts equal a per-unit numpy histogram with left-closed edges t0 + k*dt, spikes on edges included."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurojepa.data.binning import (
    bin_edges,
    bin_spikes,
    bin_spikes_at,
    bin_spikes_numpy,
    bin_spikes_sparse,
    iter_binned,
)
from neurojepa.data.session import InMemorySpikes, SpikeTrains
from neurojepa.errors import InputError


def histogram_reference(trains: SpikeTrains, edges: np.ndarray) -> np.ndarray:
    """The definition: per unit, np.histogram with its right-closed last bin removed."""
    cols = [np.histogram(trains[i][trains[i] < edges[-1]], bins=edges)[0] for i in range(len(trains))]
    return np.stack(cols, axis=1) if cols else np.zeros((len(edges) - 1, 0), dtype=np.int64)


@st.composite
def spikes_and_range(draw):
    bin_size = draw(st.sampled_from([0.01, 0.003, 0.001, 0.025, 0.1, 1 / 3]))
    t_start = draw(st.sampled_from([0.0, 0.0137, -1.2345, 1234.5671, 7.3]))
    n_bins = draw(st.integers(1, 60))
    t_stop = t_start + n_bins * bin_size + draw(st.sampled_from([0.0, 0.3 * bin_size, 0.999 * bin_size]))
    edges = t_start + np.arange(n_bins + 2) * bin_size
    n_units = draw(st.integers(0, 5))
    trains = []
    for _ in range(n_units):
        n_on = draw(st.integers(0, 20))
        on_edge = edges[draw(st.lists(st.integers(0, n_bins + 1), min_size=n_on, max_size=n_on))]
        nudged = np.nextafter(on_edge, draw(st.sampled_from([-np.inf, np.inf])))  # one ulp beside an edge
        anywhere = np.array(
            draw(st.lists(st.floats(t_start - 3 * bin_size, t_stop + 3 * bin_size), max_size=30)), dtype=float
        )
        t = np.concatenate([on_edge, nudged[: draw(st.integers(0, n_on))], anywhere])
        t = np.concatenate([t, t[: draw(st.integers(0, len(t)))]])  # duplicated spikes
        trains.append(np.sort(t))
    return SpikeTrains.from_list(list(range(10, 10 + n_units)), trains), t_start, t_stop, bin_size


@settings(max_examples=300, deadline=None)
@given(spikes_and_range())
def test_counts_equal_per_unit_numpy_histogram(case):
    trains, t_start, t_stop, bin_size = case
    edges = bin_edges(t_start, t_stop, bin_size)
    expected = histogram_reference(trains, edges)
    dense = bin_spikes(trains, t_start, t_stop, bin_size)
    assert dense.shape == (len(edges) - 1, len(trains)) and dense.dtype == np.uint16
    np.testing.assert_array_equal(dense, expected)
    np.testing.assert_array_equal(bin_spikes_numpy(trains, t_start, t_stop, bin_size), expected)
    sparse = bin_spikes_sparse(trains, t_start, t_stop, bin_size)
    assert sparse.shape == dense.shape and sparse.has_canonical_format
    np.testing.assert_array_equal(sparse.toarray(), expected)


def test_edges_are_whole_bins_from_t_start():
    edges = bin_edges(0.3, 0.3 + 0.1 * 3, 0.1)  # (0.6 - 0.3) / 0.1 = 2.9999999999999996: still 3 bins
    np.testing.assert_array_equal(edges, 0.3 + np.arange(4) * 0.1)
    assert len(bin_edges(0.0, 1.0999, 0.1)) == 11  # the partial last bin is dropped
    assert bin_edges(5.0, 5.01, 0.01).shape == (2,)


def test_long_session_with_t0_off_the_grid_and_spikes_on_every_edge():
    # 2.5 h at 10 ms: large times make the division's rounding visible; the edge values decide, as in numpy
    edges = bin_edges(1.23456, 1.23456 + 9000.0, 0.01)
    rng = np.random.default_rng(0)
    on_edges = edges[rng.choice(len(edges), 20_000, replace=False)]
    inside = rng.uniform(edges[0] - 1, edges[-1] + 1, 20_000)
    trains = SpikeTrains.from_list([0, 1], [np.sort(on_edges), np.sort(inside)])
    expected = histogram_reference(trains, edges)
    np.testing.assert_array_equal(bin_spikes(trains, edges[0], 1.23456 + 9000.0, 0.01), expected)
    np.testing.assert_array_equal(bin_spikes_sparse(trains, edges[0], 1.23456 + 9000.0, 0.01).toarray(), expected)


def test_chunks_concatenate_to_the_whole_range():
    rng = np.random.default_rng(1)
    trains = SpikeTrains.from_list([4, 7, 9], [np.sort(rng.uniform(0, 30, n)) for n in (500, 0, 2000)])
    t0, t1, dt = 0.513, 29.1, 0.01
    chunks = list(iter_binned(InMemorySpikes(trains), [9, 4], t0, t1, dt, chunk_s=2.5))
    firsts = [b for b, _ in chunks]
    assert firsts == list(range(0, len(bin_edges(t0, t1, dt)) - 1, 250))
    whole = bin_spikes(trains, t0, t1, dt)[:, [2, 0]]  # iter_binned follows the requested unit order
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), whole)


def test_overflowing_uint16_switches_to_uint32():
    trains = SpikeTrains.from_list([0], [np.full(70_000, 0.5)])
    counts = bin_spikes(trains, 0.0, 1.0, 0.1)
    assert counts.dtype == np.uint32 and counts[5, 0] == 70_000 and counts.sum() == 70_000
    sparse = bin_spikes_sparse(trains, 0.0, 1.0, 0.1)
    assert sparse.dtype == np.uint32 and sparse[5, 0] == 70_000


def test_bin_spikes_at_matches_histogram_on_an_edge_slice():
    edges = bin_edges(0.0, 10.0, 0.01)[300:701]
    trains = SpikeTrains.from_list([0], [np.arange(0, 10, 0.005)])
    np.testing.assert_array_equal(bin_spikes_at(trains, edges), histogram_reference(trains, edges))


@pytest.mark.parametrize(
    ("args", "where"),
    [
        ((0.0, 1.0, 0.0), "bin_size"),
        ((0.0, 1.0, -0.01), "bin_size"),
        ((0.0, 1.0, float("nan")), "bin_size"),
        ((0.0, 1.0, float("inf")), "bin_size"),
        ((1.0, 1.0, 0.01), "time range"),
        ((2.0, 1.0, 0.01), "time range"),
        ((0.0, 0.005, 0.01), "time range"),
        ((0.0, float("nan"), 0.01), "time range"),
    ],
)
def test_bad_bins_raise_input_error(args, where):
    with pytest.raises(InputError) as err:
        bin_edges(*args)
    assert err.value.where == where


def test_unsorted_spikes_are_refused():
    trains = SpikeTrains.from_list([0], [np.array([0.5, 0.2, 0.7])])
    with pytest.raises(InputError, match="not sorted"):
        bin_spikes(trains, 0.0, 1.0, 0.1)
    with pytest.raises(InputError, match="not sorted"):
        bin_spikes_sparse(trains, 0.0, 1.0, 0.1)
