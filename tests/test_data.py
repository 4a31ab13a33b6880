"""Bad data get messages that name the column and the rows."""

import numpy as np
import pandas as pd
import pytest

from sbi_plugins.data import prepare_data
from sbi_plugins.errors import DataError


def test_groups_are_coded_with_the_users_labels(cookie):
    df = pd.DataFrame({"chips": [3, 4, 5], "location": ["b", "a", "b"]})
    prepared = prepare_data(df, cookie, "location")
    assert list(prepared.group_labels) == ["a", "b"]
    assert list(prepared.group_index) == [1, 0, 1]
    assert prepared.x.shape == (3, 1)


def test_missing_observable_column(cookie):
    with pytest.raises(
        DataError, match="'chips' missing.*the data have count, location"
    ):
        prepare_data(pd.DataFrame({"count": [1], "location": [1]}), cookie, "location")


def test_missing_group_column(cookie):
    with pytest.raises(DataError, match="group column 'site' is not in the data"):
        prepare_data(pd.DataFrame({"chips": [1]}), cookie, "site")


def test_empty_group_values_name_the_rows(cookie):
    df = pd.DataFrame({"chips": [1, 2, 3], "location": [1, np.nan, 2]})
    with pytest.raises(DataError, match="'location' is empty at row 1"):
        prepare_data(df, cookie, "location")


def test_non_numeric_values_name_the_rows(cookie):
    df = pd.DataFrame({"chips": ["3", "many", "4"], "location": [1, 1, 2]})
    with pytest.raises(DataError, match="'chips' has non-numeric values at row 1"):
        prepare_data(df, cookie, "location")


def test_unreadable_file(tmp_path, cookie):
    with pytest.raises(DataError, match="no such file"):
        prepare_data(tmp_path / "nope.csv", cookie, None)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match="cannot read data file"):
        prepare_data(binary, cookie, None)


def test_whitespace_separated_reference_file_reads(tmp_path, cookie, cookie_data):
    path = tmp_path / "cookies.dat"
    cookie_data.to_csv(path, sep=" ", index=False)
    prepared = prepare_data(path, cookie, "location")
    assert prepared.x.shape == (150, 1) and prepared.num_groups == 5


def test_embedded_demo_data_equal_the_reference(cookie_data):
    from sbi_plugins_cookie import example_data

    pd.testing.assert_frame_equal(example_data(), cookie_data)
