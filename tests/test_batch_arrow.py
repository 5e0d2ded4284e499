"""The Arrow arrays a study's tables are made of, built from their buffers: equal to
``pyarrow.array``'s, whatever the values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from retwin.batch import arrow

labels = st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=20)


@given(values=labels, times=st.integers(0, 4))
def test_strings_equal_pyarrow_array(values: list[str | None], times: int) -> None:
    want = pa.array(values, pa.string())
    got = arrow.strings(values)
    got.validate(full=True)
    assert got.equals(want) and got.null_count == want.null_count
    index = pa.array(np.tile(np.arange(len(values), dtype=np.int64), times))
    rep = arrow.repeated_strings(values, times)
    rep.validate(full=True)
    assert rep.equals(want.take(index))
    assert arrow.array(values, pa.string()).equals(want)


@given(ints=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20),
       floats=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20),
       flags=st.lists(st.booleans(), max_size=20))
def test_numbers_equal_pyarrow_array(ints: list[int], floats: list[float],
                                     flags: list[bool]) -> None:
    for values, type_ in ((ints, pa.int64()), (floats, pa.float64()), (flags, pa.bool_())):
        got = arrow.array(values, type_)
        got.validate(full=True)
        want = pa.array(values, type_)
        assert got.type == type_ and got.null_count == 0 and len(got) == len(want)
        assert np.array_equal(got.to_numpy(zero_copy_only=False),
                              want.to_numpy(zero_copy_only=False), equal_nan=True)
    grid = np.arange(12, dtype=np.float64).reshape(3, 4)  # a 2-D array is taken row by row
    assert arrow.numbers(grid, pa.float64()).equals(pa.array(grid.reshape(-1)))
