"""CodecTables: validation, pickle-free persistence, a fingerprint that sees every array."""

from __future__ import annotations

import numpy as np
import pytest
from vitcodec.codec.tables import CodecTables


def small_tables() -> CodecTables:
    """Hand-made valid tables (no torch needed)."""
    cdf = np.zeros((2, 6), np.int32)
    cdf[0, :4] = [0, 30000, 60000, 65536]
    cdf[1, :6] = [0, 1000, 20000, 45000, 64000, 65536]
    return CodecTables(
        z_cdf=cdf,
        z_cdf_length=np.array([4, 6]),
        z_offset=np.array([-1, -2]),
        z_medians=np.array([0.25, -1.5], np.float32),
        y_cdf=cdf.copy(),
        y_cdf_length=np.array([4, 6]),
        y_offset=np.array([-1, -2]),
        scale_table=np.array([0.11, 0.5]),
    )


def test_save_load_round_trip_without_pickle(tmp_path):
    tables = small_tables()
    tables.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as npz:
        assert all(npz[key].dtype != object for key in npz.files)
    again = CodecTables.load(tmp_path / "t.npz")
    assert again.fingerprint() == tables.fingerprint()
    assert again.z_cdf.dtype == np.int32 and again.scale_table.dtype == np.float64


def test_fingerprint_sees_every_array():
    base = small_tables()
    seen = {base.fingerprint()}
    arrays = base.to_arrays()
    for name in ["z_offset", "y_offset", "z_medians", "scale_table"]:
        changed = dict(arrays)
        changed[name] = arrays[name].copy()
        changed[name][0] = changed[name][0] - 1 if name.endswith("offset") else changed[name][0] * 0.5
        seen.add(CodecTables.from_arrays(changed).fingerprint())
    assert len(seen) == 5 and len(base.fingerprint()) == 32


@pytest.mark.parametrize(
    "name, value",
    [
        ("z_cdf_length", np.array([4, 7])),  # longer than the rows
        ("y_offset", np.array([1, 2, 3])),
        ("scale_table", np.array([0.5, 0.11])),
        ("z_medians", np.array([np.nan, 0.0], np.float32)),
        ("z_cdf", np.zeros((2, 6), np.float32)),
    ],
)
def test_invalid_tables_are_refused(name, value):
    arrays = small_tables().to_arrays()
    arrays[name] = value
    with pytest.raises(ValueError):
        CodecTables.from_arrays(arrays)


def test_non_monotone_cdf_is_refused():
    arrays = small_tables().to_arrays()
    cdf = arrays["y_cdf"].copy()
    cdf[1, 2] = cdf[1, 1]
    arrays["y_cdf"] = cdf
    with pytest.raises(ValueError, match="row 1"):
        CodecTables.from_arrays(arrays)
