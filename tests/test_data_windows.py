"""Window datasets (views, batches, counts) and the scaler (training rows only, inverse, state)."""

import numpy as np
import pytest
import torch

from ecalf.data import StandardScaler, WindowDataset
from ecalf.errors import DataError


def _series(rows=40, channels=3):
    return torch.arange(rows * channels, dtype=torch.float32).reshape(rows, channels)  # (T, C)


def test_length_is_rows_minus_l_minus_h_plus_one():
    ds = WindowDataset(_series(40), context_length=8, prediction_length=4)
    assert len(ds) == 40 - 8 - 4 + 1
    assert (ds.num_channels, ds.context_length, ds.prediction_length) == (3, 8, 4)
    assert len(WindowDataset(_series(12), 8, 4)) == 1


def test_items_are_the_right_rows_and_views():
    series = _series(40)
    ds = WindowDataset(series, 8, 4)
    past, future = ds[5]
    assert past.shape == (8, 3) and future.shape == (4, 3)
    torch.testing.assert_close(past, series[5:13])
    torch.testing.assert_close(future, series[13:17])
    for t in (past, future):
        assert t.untyped_storage().data_ptr() == series.untyped_storage().data_ptr()
    series[13, 0] = -1.0  # a view sees the change, a copy would not
    assert ds[5][1][0, 0] == -1.0
    torch.testing.assert_close(ds[-1][1], series[-4:])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_unfolded_windows_are_a_view_of_every_window():
    series = _series(30)
    ds = WindowDataset(series, 6, 2)
    windows = ds.windows  # (N, C, L + H)
    assert windows.shape == (len(ds), 3, 8)
    assert windows.untyped_storage().data_ptr() == series.untyped_storage().data_ptr()
    torch.testing.assert_close(windows[4].T, series[4:12])


def test_get_batch_equals_stacked_items():
    series = torch.randn(50, 4)
    ds = WindowDataset(series, 10, 5)
    idx = torch.tensor([0, 7, 3, len(ds) - 1, 7])
    past, future = ds.get_batch(idx)
    assert past.shape == (5, 10, 4) and future.shape == (5, 5, 4)
    assert past.is_contiguous() and future.is_contiguous()
    torch.testing.assert_close(past, torch.stack([ds[int(i)][0] for i in idx]))
    torch.testing.assert_close(future, torch.stack([ds[int(i)][1] for i in idx]))
    with pytest.raises(IndexError, match=r"in \[0, 36\)"):
        ds.get_batch(torch.tensor([0, 36]))


def test_works_with_a_dataloader():
    ds = WindowDataset(_series(20), 4, 2)
    past, future = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    torch.testing.assert_close((past, future), ds.get_batch(torch.arange(3)))


def test_too_short_series_is_a_data_error():
    with pytest.raises(DataError, match=r"11 rows hold no window of context 8 \+ prediction 4 = 12 rows"):
        WindowDataset(_series(11), 8, 4)


# --------------------------------------------------------------------------------------------------
# Scaler
# --------------------------------------------------------------------------------------------------


def test_scaler_standardises_with_population_std():
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 3.0, size=(200, 4)).astype(np.float32)
    scaler = StandardScaler().fit(data)
    assert scaler.mean.dtype == np.float64
    np.testing.assert_allclose(scaler.std, data.astype(np.float64).std(axis=0, ddof=0))
    scaled = scaler.transform(data)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(scaler.inverse_transform(scaled), data, rtol=1e-5)


def test_constant_channel_gets_unit_std():
    data = np.stack([np.full(10, 4.0), np.arange(10.0)], axis=1)
    scaler = StandardScaler().fit(data)
    assert scaler.std[0] == 1.0
    np.testing.assert_array_equal(scaler.transform(data)[:, 0], 0.0)


def test_inverse_transform_on_tensors_uses_the_last_axis():
    data = np.random.default_rng(1).normal(size=(30, 3)) * [1, 10, 100] + [0, 5, -5]
    scaler = StandardScaler().fit(data)
    batch = torch.randn(2, 7, 3, dtype=torch.float32)  # (B, H, C)
    restored = scaler.inverse_transform(batch)
    assert isinstance(restored, torch.Tensor) and restored.dtype == torch.float32
    expected = batch.double().numpy() * scaler.std + scaler.mean
    np.testing.assert_allclose(restored.numpy(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scaler.transform(restored), batch, rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match="fitted on 3 channels"):
        scaler.inverse_transform(torch.zeros(2, 4))


def test_state_dict_round_trip():
    scaler = StandardScaler().fit(np.random.default_rng(2).normal(size=(20, 2)))
    state = scaler.state_dict()
    assert set(state) == {"mean", "std"} and all(isinstance(v, float) for v in state["mean"])
    again = StandardScaler.from_state_dict(state)
    np.testing.assert_array_equal(again.mean, scaler.mean)
    np.testing.assert_array_equal(again.std, scaler.std)
    with pytest.raises(DataError, match="invalid scaler state"):
        StandardScaler.from_state_dict({"mean": [0.0]})
    with pytest.raises(DataError, match="not fitted"):
        StandardScaler().transform(np.zeros((2, 2)))
