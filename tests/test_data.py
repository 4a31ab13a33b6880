"""Bad data get messages that name the column and the rows."""

import importlib.util

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


def test_a_misspelled_group_column_is_named_with_the_one_meant(cookie):
    frame = pd.DataFrame({"chips": [1], "participant_id": [1]})
    for typo in ("participant_idx", "Participant_ID", "partcipant_id"):
        with pytest.raises(DataError, match=r"did you mean 'participant_id'\?"):
            prepare_data(frame, cookie, typo)
    with pytest.raises(DataError) as caught:
        prepare_data(frame, cookie, "site")
    assert "did you mean" not in str(caught.value)  # nothing near: no guess


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


COOKIES = "chips,location\n12,a\n13,b\n9,a\n"


@pytest.mark.parametrize(
    "name,content",
    [
        ("comma.csv", COOKIES.encode()),
        ("bom.csv", ("\ufeff" + COOKIES).encode()),
        ("crlf.csv", COOKIES.replace("\n", "\r\n").encode()),
        ("semicolon.csv", COOKIES.replace(",", ";").encode()),
        ("tab.tsv", COOKIES.replace(",", "\t").encode()),
        ("tab-bom.txt", ("\ufeff" + COOKIES.replace(",", "\t")).encode()),
        ("excel-unicode.txt", COOKIES.replace(",", "\t").encode("utf-16")),
        ("spaces.csv", COOKIES.replace(",", ", ").encode()),
        ("quoted.csv", b'"chips","location"\n12,"a"\n13,"b"\n9,"a"\n'),
        (
            "records.json",
            b'[{"chips":12,"location":"a"},{"chips":13,"location":'
            b'"b"},{"chips":9,"location":"a"}]',
        ),
        (
            "lines.jsonl",
            b'{"chips":12,"location":"a"}\n{"chips":13,"location":'
            b'"b"}\n{"chips":9,"location":"a"}\n',
        ),
    ],
)
def test_common_table_dialects_read_alike(tmp_path, cookie, name, content):
    from sbi_plugins.data import read_table

    path = tmp_path / name
    path.write_bytes(content)
    frame = read_table(path)
    assert list(frame.columns) == ["chips", "location"]
    assert frame["chips"].tolist() == [12, 13, 9]
    assert frame["location"].tolist() == ["a", "b", "a"]
    assert list(prepare_data(path, cookie, "location").group_labels) == ["a", "b"]


def test_compressed_and_stata_tables_read(tmp_path):
    import gzip
    import zipfile

    from sbi_plugins.data import read_table

    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(COOKIES.encode()))
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as archive:
        archive.writestr("cookies.csv", COOKIES.replace(",", ";"))
    pd.read_csv(tmp_path / "c.csv.gz").to_stata(tmp_path / "c.dta", write_index=False)
    for name in ("c.csv.gz", "c.zip", "c.dta"):
        frame = read_table(tmp_path / name)
        assert frame["chips"].tolist() == [12, 13, 9], name


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_a_one_column_csv_is_one_column(tmp_path, cookie, bom):
    # the python sniffer split "chips" on the letter "s"
    path = tmp_path / "chips.csv"
    path.write_text(f"{bom}chips\n12\n13\n9\n", encoding="utf-8")
    prepared = prepare_data(path, cookie, None)
    assert prepared.x[:, 0].tolist() == [12, 13, 9]
    named = tmp_path / "named.csv"
    named.write_text("reaction time\n0.5\n0.7\n")
    from sbi_plugins.data import read_table

    assert list(read_table(named).columns) == ["reaction time"]


def test_decimal_commas_in_a_semicolon_file(tmp_path):
    from sbi_plugins.data import read_table

    path = tmp_path / "rt.csv"
    path.write_text("rt;response\n0,53;1\n1,25;0\n")
    frame = read_table(path)
    assert frame["rt"].tolist() == [0.53, 1.25] and frame["response"].dtype.kind == "i"


def hdf5_fit(tmp_path):
    path = tmp_path / "fit.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    return path


@pytest.mark.parametrize(
    "make,pattern",
    [
        (hdf5_fit, r"this is a netCDF file \(a saved fit\?\).*must be a table: CSV"),
        (
            lambda d: d / "classic.nc",
            r"this is a netCDF file",
        ),
        (lambda d: d, r"it is a directory; the data must be a table"),
        (lambda d: d / "empty.csv", r"the file is empty"),
        (lambda d: d / "blank.csv", r"the file is empty"),
        (lambda d: d / "dup.csv", r"column\(s\) 'chips' appear more than once"),
        (lambda d: d / "dup.tsv", r"column\(s\) 'chips' appear more than once"),
        (lambda d: d / "ragged.csv", r"one column, 'chips', but the rows have more"),
        (lambda d: d / "badrow.csv", r"comma-separated CSV.*line 3"),
        (lambda d: d / "t.parquet", r"parquet file; reading it needs pyarrow"),
        (lambda d: d / "book.xlsx", r"Excel workbook: save the sheet as CSV"),
        (lambda d: d / "latin1.csv", r"not UTF-8 text \(byte 0xfc on line 2\)"),
        (lambda d: d / "page.csv", r"HTML or XML, not a table"),
    ],
)
def test_what_is_not_a_readable_table_is_named(tmp_path, make, pattern):
    import zipfile

    from sbi_plugins.data import read_table

    files = {
        "classic.nc": b"CDF\x01" + bytes(32),
        "empty.csv": b"",
        "blank.csv": b"\n \n",
        "dup.csv": b"chips,location,chips\n1,a,2\n",
        "dup.tsv": b"chips\tchips\n1\t2\n",
        "ragged.csv": b"chips\n12,1\n13,2\n",
        "badrow.csv": b"chips,location\n12,a\n13,b,c\n",
        "t.parquet": b"PAR1" + bytes(16) + b"PAR1",
        "latin1.csv": "chips,location\n12,Z\u00fcrich\n".encode("latin-1"),
        "page.csv": b"<!DOCTYPE html>\n<html></html>\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "book.xlsx", "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
    path = make(tmp_path)
    if path.suffix == ".parquet" and importlib.util.find_spec("pyarrow"):
        pytest.skip("pyarrow is installed: parquet is read")
    with pytest.raises(DataError, match=pattern) as info:
        read_table(path)
    assert "\n" not in str(info.value)
