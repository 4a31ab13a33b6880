"""The user's table -> validated arrays: observables, group index, group labels."""

from __future__ import annotations

import csv
import difflib
import importlib.util
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sbi_plugins.contract import Simulator
from sbi_plugins.errors import DataError, SbiPluginsError, describe_rows

OMISSION_CODE = -999.0
"""HSSM's code for a missing response time (`rt = -999` with a `deadline` column)."""
DEADLINE_HINT = (
    "if they are omissions (no response before a deadline), pass the deadline the "
    "trials had: deadline=SECONDS (--deadline SECONDS), or deadline='column' naming "
    "a column of per-trial deadlines (HSSM's 'deadline')"
)


def decision_columns(simulator: Simulator) -> tuple[int, int]:
    """(response-time column, choice column) of a decision model, or an error: a
    deadline needs one continuous time and one choice."""
    kinds = [o.kind for o in simulator.observables]
    if sorted(kinds) != ["choice", "continuous"]:
        raise SbiPluginsError(
            f"a deadline needs a simulator with one response time and one choice; "
            f"{simulator.name!r} has observables "
            f"{', '.join(f'{o.name} ({o.kind})' for o in simulator.observables)}"
        )
    return kinds.index("continuous"), kinds.index("choice")


@dataclass
class PreparedData:
    """Data rows in the simulator's column order, and each row's group."""

    x: np.ndarray
    group: str | None
    group_labels: np.ndarray
    group_index: np.ndarray
    row_labels: np.ndarray
    omitted: np.ndarray | None = None
    """Rows that ended without a response (before their deadline); None: none."""
    deadline: np.ndarray | None = None
    """Each row's deadline in seconds (inf where a row has none); None: no deadline."""

    @property
    def decided(self) -> np.ndarray:
        """Rows with a response (all rows without omissions)."""
        if self.omitted is None:
            return np.ones(len(self.x), dtype=bool)
        return ~self.omitted

    @property
    def num_groups(self) -> int:
        return len(self.group_labels)

    @property
    def group_dim(self) -> str:
        return self.group or "group"


TABLE_FORMATS = (
    "a table: CSV (comma, semicolon, tab or space separated, UTF-8), JSON, "
    "Stata (.dta), SAS, or parquet/feather (with pyarrow)"
)
SEPARATORS = (",", "\t", ";", "|")
WHITESPACE = r"\s+"
_SNIFF_CHARS = 1 << 16
_SNIFF_ROWS = 200
# leading bytes of formats that are not (or not yet) text tables
_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"CDF\x01", "netcdf"),
    (b"CDF\x02", "netcdf"),
    (b"CDF\x05", "netcdf"),
    (b"PAR1", "parquet"),
    (b"ARROW1", "feather"),
    (b"FEA1", "feather"),
    (b"ORC", "orc"),
    (b"<stata_dta>", "stata"),
    (b"$FL2", "spss"),
    (b"$FL3", "spss"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "xls"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"%PDF", "pdf"),
)
_SUFFIXES = {
    ".nc": "netcdf",
    ".nc4": "netcdf",
    ".netcdf": "netcdf",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".feather": "feather",
    ".arrow": "feather",
    ".orc": "orc",
    ".dta": "stata",
    ".sas7bdat": "sas7bdat",
    ".xpt": "xport",
    ".sav": "spss",
    ".zsav": "spss",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".xls": "xls",
    ".ods": "ods",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# formats that are not tables, or that pandas reads only through Excel engines
_REFUSED = {
    "netcdf": "this is a netCDF file (a saved fit?)",
    "hdf5": "this is an HDF5 or netCDF file (a saved fit?)",
    "xls": "this is an Excel workbook: save the sheet as CSV",
    "xlsx": "this is an Excel workbook: save the sheet as CSV",
    "ods": "this is a spreadsheet: save the sheet as CSV",
    "pdf": "this is a PDF document",
    "pickle": "this is a Python pickle (it could run code when read)",
    "zstd": "this is zstd-compressed: decompress it first",
}
# readable with pandas alone, or with the optional package named
_NEEDS = {
    "parquet": "pyarrow",
    "feather": "pyarrow",
    "orc": "pyarrow",
    "spss": "pyreadstat",
}


def _data_error(path: Path, reason: str) -> DataError:
    return DataError(f"cannot read data file {str(path)!r}: {reason}")


def _kind(raw: bytes, name: str) -> str:
    """What a file is, from its first bytes, else from its name's suffix."""
    by_name = _SUFFIXES.get(Path(name).suffix.lower(), "text")
    for magic, kind in _MAGIC:
        if raw.startswith(magic):
            return "netcdf" if kind == "hdf5" and by_name == "netcdf" else kind
    if raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return by_name


def _unpack(path: Path, raw: bytes) -> tuple[bytes, str]:
    """Decompress gzip, bz2, xz and single-file zip (pandas reads those CSVs);
    returns the bytes and what they are."""
    import bz2
    import gzip
    import lzma
    import zipfile

    name = path.name
    kind = _kind(raw, name)
    if kind == "zip":
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
                if "[Content_Types].xml" in members or "xl/workbook.xml" in members:
                    return raw, "xlsx"
                if "mimetype" in members or "content.xml" in members:
                    return raw, "ods"
                if len(members) != 1:
                    raise _data_error(
                        path, f"a zip archive of {len(members)} files, not one table"
                    )
                name = members[0]
                raw = archive.read(name)
        except zipfile.BadZipFile as exc:
            raise _data_error(path, f"a damaged zip archive ({exc})") from exc
        return raw, _kind(raw, name)
    openers = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}
    if kind in openers:
        try:
            raw = openers[kind](raw)
        except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
            raise _data_error(path, f"a damaged {kind} file ({exc})") from exc
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in (".gz", ".bz2", ".xz"):
            name = stem
        return raw, _kind(raw, name)
    return raw, kind


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 with or without a BOM, or UTF-16 with its BOM (Excel's "Unicode
    text"); anything else is refused rather than guessed."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise _data_error(path, f"damaged UTF-16 text ({exc.reason})") from exc
    if b"\x00" in raw[:_SNIFF_CHARS]:
        raise _data_error(
            path, f"it is not text (binary content); the data must be {TABLE_FORMATS}"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _data_error(
            path,
            f"it is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
            "save it as CSV UTF-8",
        ) from exc


def _fields(rows: list[str], sep: str) -> list[list[str]]:
    if sep == WHITESPACE:
        return [re.findall(r'"[^"]*"|\S+', row) for row in rows]
    reader = csv.reader(io.StringIO("\n".join(rows)), delimiter=sep)
    out = []
    try:
        for fields in reader:
            if fields:
                out.append(fields)
    except csv.Error:
        pass  # a quote cut by the sample's end: judge the rows before it
    return out


def sniff_separator(text: str) -> str:
    """The separator under which the header splits into most columns and every
    sampled row has as many fields (or one more: row names); whitespace only when
    no separator character does. A header that none splits is one column.

    Python's `csv.Sniffer` guesses any character, so it split a one-column CSV
    `chips` on the letter "s"."""
    sample = text[:_SNIFF_CHARS]
    rows = [row for row in sample.splitlines() if row.strip()]
    if len(text) > _SNIFF_CHARS and len(rows) > 1:
        rows = rows[:-1]  # cut mid-row
    rows = rows[: _SNIFF_ROWS + 1]
    ranked = []
    for order, sep in enumerate((*SEPARATORS, WHITESPACE)):
        header, *body = _fields(rows, sep) or [[]]
        width = len(header)
        if width < 2:
            continue
        consistent = len({len(f) for f in body} - {width}) == 0 or all(
            len(f) == width + 1 for f in body
        )
        if sep == WHITESPACE and not consistent:
            continue
        ranked.append((consistent, sep != WHITESPACE, width, -order, sep))
    return max(ranked)[-1] if ranked else ","


def _header(text: str, sep: str) -> list[str]:
    first = re.search(r"[^\r\n]*\S[^\r\n]*", text)
    fields = _fields([first.group(0)], sep) if first else []
    return [f.strip().strip('"') for f in fields[0]] if fields else []


def _decimal_commas(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers written with a decimal comma (`0,53` in a `;` file, as European
    spreadsheets save them) become numbers."""
    pattern = r"^\s*[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?\s*$"
    for column in frame.columns:
        if pd.api.types.is_numeric_dtype(frame[column]):
            continue
        values = frame[column].dropna()
        if len(values) and values.astype(str).str.match(pattern).all():
            frame[column] = pd.to_numeric(
                frame[column].map(
                    lambda v: v.replace(",", ".") if isinstance(v, str) else v
                )
            )
    return frame


def _read_text(path: Path, raw: bytes) -> pd.DataFrame:
    text = _decode(path, raw)
    first = re.search(r"\S", text)
    if first is None:
        raise _data_error(path, f"the file is empty; the data must be {TABLE_FORMATS}")
    start = first.group(0)
    if start == "<":
        raise _data_error(
            path, f"this is HTML or XML, not a table; the data must be {TABLE_FORMATS}"
        )
    if start in "[{":
        return _read_json(path, text, lines=False)
    sep = sniff_separator(text)
    header = [name for name in _header(text, sep) if name]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise _data_error(
            path,
            f"column(s) {', '.join(map(repr, repeated))} appear more than once in "
            "the header; give every column its own name",
        )
    label = {",": "comma", "\t": "tab", ";": "semicolon", "|": "|"}.get(sep, "space")
    try:
        # `a, b` as some tools write it: the space is not part of the value
        options = {} if sep == WHITESPACE else {"skipinitialspace": True}
        frame = pd.read_csv(io.StringIO(text), sep=sep, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise _data_error(path, f"as {label}-separated CSV: {reason}") from exc
    if len(frame.columns) == 1 and not frame.index.equals(pd.RangeIndex(len(frame))):
        raise _data_error(
            path,
            f"the header names one column, {header[0]!r}, but the rows have more "
            "fields: give every column a name in the header",
        )
    frame.columns = [c.strip() if isinstance(c, str) else c for c in frame.columns]
    return _decimal_commas(frame) if sep != "," else frame


def _read_json(path: Path, text: str, lines: bool) -> pd.DataFrame:
    """Records (`[{...}, ...]`), columns (`{"col": {...}}`) or JSON lines."""
    lines = lines or (text.lstrip().startswith("{") and "}\n{" in text.strip())
    try:
        frame = pd.read_json(io.StringIO(text), lines=lines)
    except ValueError as exc:
        raise _data_error(
            path, f"as JSON: {exc}; the data must be {TABLE_FORMATS}"
        ) from exc
    if not isinstance(frame, pd.DataFrame):
        raise _data_error(path, f"the JSON is not a table; it must be {TABLE_FORMATS}")
    return frame


def _read_binary(path: Path, raw: bytes, kind: str) -> pd.DataFrame:
    needs = _NEEDS.get(kind)
    if needs is not None and importlib.util.find_spec(needs) is None:
        raise _data_error(
            path,
            f"this is a {kind} file; reading it needs {needs} (pip install "
            f"{needs}), or save the table as CSV",
        )
    readers = {
        "parquet": pd.read_parquet,
        "feather": pd.read_feather,
        "orc": pd.read_orc,
        "stata": pd.read_stata,
        "sas7bdat": lambda b: pd.read_sas(b, format="sas7bdat"),
        "xport": lambda b: pd.read_sas(b, format="xport"),
        "spss": None,
    }
    try:
        if kind == "spss":  # pandas reads SPSS from a path only
            return pd.read_spss(str(path))
        return readers[kind](io.BytesIO(raw))
    except Exception as exc:  # foreign readers raise their own error types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _data_error(path, f"as {kind}: {reason}") from exc


def as_table(data: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The user's data: a DataFrame as it is, a path read (`read_table`); anything
    else refused with what to pass."""
    if isinstance(data, pd.DataFrame):
        return data
    if not isinstance(data, str | os.PathLike):
        raise DataError(
            f"the data must be a pandas DataFrame or the path of a table, got "
            f"{type(data).__name__}: wrap an array as pd.DataFrame(array, "
            "columns=[...]) with the columns the simulator needs (`sbi-plugins list "
            "NAME` shows them) and the group column"
        )
    return read_table(data)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read the user's table (CSV in its common dialects, JSON, Stata, SAS, parquet),
    or refuse it in one line that says what the file is and what to do."""
    path = Path(path)
    if not os.path.lexists(path) or not path.exists():
        raise _data_error(path, "no such file")
    if path.is_dir():
        raise _data_error(path, f"it is a directory; the data must be {TABLE_FORMATS}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _data_error(path, exc.strerror or str(exc)) from exc
    raw, kind = _unpack(path, raw)
    if kind in _REFUSED:
        raise _data_error(path, f"{_REFUSED[kind]}; the data must be {TABLE_FORMATS}")
    if kind in ("json", "jsonl"):
        frame = _read_json(path, _decode(path, raw), lines=kind == "jsonl")
    elif kind == "text":
        frame = _read_text(path, raw)
    else:
        frame = _read_binary(path, raw, kind)
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if repeated:
        raise _data_error(
            path,
            f"column(s) {', '.join(map(repr, repeated))} appear more than once; "
            "give every column its own name",
        )
    return frame


def accept_choice_indices(simulator: Simulator, x: np.ndarray) -> np.ndarray:
    """Choices coded as 0-based indices (0/1, as many tools write them) become the
    simulator's own codes (e.g. -1/1, as HSSM writes them); a column that mixes the
    two conventions is left for the validation to reject."""
    x = x.copy()
    for j, obs in enumerate(simulator.observables):
        if obs.kind != "choice":
            continue
        values = x[:, j]
        finite = values[np.isfinite(values)]
        indices = np.arange(len(obs.codes), dtype=float)
        if np.isin(finite, obs.codes).all() or not np.isin(finite, indices).all():
            continue
        index = np.nan_to_num(values).clip(0, len(obs.codes) - 1).astype(int)
        mapped = np.asarray(obs.codes)[index]
        x[:, j] = np.where(np.isfinite(values), mapped, values)
    return x


def condition_columns(
    frame: pd.DataFrame, simulator: Simulator, group: str | None
) -> dict[str, np.ndarray]:
    """The data's other columns (conditions, covariates), kept with every fit as
    `constant_data` so plots, checks and the report can split by them: numbers and
    booleans as they are, anything else as text. Names netCDF cannot store (with a
    "/"), the group column (kept as its index) and the columns pandas names
    "Unnamed: 0" for a header cell left blank (the index `to_csv` writes) are left
    out."""
    skip = {*simulator.observable_names, group}
    kept = {}
    for column in frame.columns:
        name = str(column)
        if name in skip or "/" in name or re.fullmatch(r"Unnamed: \d+", name):
            continue
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            kept[name] = values.to_numpy()
        else:
            kept[name] = values.astype(str).to_numpy()
    return kept


def non_numeric_hint(name: str, values: pd.Series, codes: tuple | None) -> str:
    """What the non-numeric values are, and the likely fix: decimal commas, or
    labels (a choice coded 'upper'/'lower') to recode as numbers."""
    found = list(dict.fromkeys(map(str, values)))
    shown = ", ".join(map(repr, found[:4])) + (", ..." if len(found) > 4 else "")
    if all(re.fullmatch(r"-?\d*,\d+", v.strip()) for v in found[:20]):
        return (
            f"found {shown}: decimal commas? Write '.' decimals, or separate the "
            "columns with ';' (read as decimal commas then)"
        )
    coded = f" coded {', '.join(f'{c:g}' for c in codes)}" if codes else ""
    return (
        f"found {shown}; {name!r} takes numbers{coded}: recode, e.g. "
        f"df[{name!r}] = df[{name!r}].map({{{found[0]!r}: ...}})"
    )


def did_you_mean(name: str, choices: list[str]) -> str:
    """ "; did you mean 'participant_id'?" for a near miss (case or a typo)."""
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return f"; did you mean {lowered[name.lower()]!r}?"
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def prepare_data(
    data: pd.DataFrame | str | Path,
    simulator: Simulator,
    group: str | None,
    deadline: float | str | None = None,
) -> PreparedData:
    """Check the columns the simulator needs and code the groups 0..G-1 in order of
    their sorted labels (the user's labels become coordinates). With a `deadline`
    (seconds, or the name of a column of per-trial deadlines) rows whose response
    time is missing or -999 (HSSM's code) are omissions (see `mark_omissions`)."""
    frame = as_table(data)
    if len(frame) == 0:
        raise DataError("the data have no rows")
    columns = [str(c) for c in frame.columns]
    missing = [o for o in simulator.observable_names if o not in frame.columns]
    if missing:
        raise DataError(
            f"column(s) {', '.join(map(repr, missing))} missing from the data; the "
            f"{simulator.name} simulator needs {', '.join(simulator.observable_names)} "
            f"(the data have {', '.join(columns)})"
        )
    labels = frame.index.to_numpy()
    omitted, deadlines = mark_omissions(frame, simulator, deadline)
    x = np.empty((len(frame), len(simulator.observables)))
    for j, observable in enumerate(simulator.observables):
        name = observable.name
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna().to_numpy() & frame[name].notna().to_numpy()
        if omitted is not None:
            bad &= ~omitted  # an omitted row's response is ignored
        if bad.any():
            raise DataError(
                f"column {name!r} has non-numeric values at "
                f"{describe_rows(bad, labels)}: "
                f"{non_numeric_hint(name, frame[name][bad], observable.codes)}"
            )
        x[:, j] = values.to_numpy(dtype=float)
    if omitted is not None:
        x[omitted] = np.nan
    x = accept_choice_indices(simulator, x)
    if group is None:
        return PreparedData(
            x,
            None,
            np.array(["all"]),
            np.zeros(len(frame), dtype=np.int64),
            labels,
            omitted,
            deadlines,
        )
    if group not in frame.columns:
        in_index = group in (frame.index.names or [])
        raise DataError(
            f"group column {group!r} is the table's index, not one of its columns "
            "(after a groupby?): pass df.reset_index()"
            if in_index
            else f"group column {group!r} is not in the data (the data have "
            f"{', '.join(columns)}){did_you_mean(str(group), columns)}"
        )
    groups = frame[group]
    bad = groups.isna().to_numpy()
    if bad.any():
        raise DataError(
            f"group column {group!r} is empty at {describe_rows(bad, labels)}"
        )
    codes, uniques = pd.factorize(groups, sort=True)
    return PreparedData(
        x,
        group,
        np.asarray(uniques),
        codes.astype(np.int64),
        labels,
        omitted,
        deadlines,
    )


def _deadlines(
    frame: pd.DataFrame, deadline: float | str, labels: np.ndarray
) -> np.ndarray:
    """Each row's deadline in seconds (inf where a deadline column is empty)."""
    if isinstance(deadline, str):
        if deadline not in frame.columns:
            columns = ", ".join(str(c) for c in frame.columns)
            raise DataError(
                f"deadline column {deadline!r} is not in the data (the data have "
                f"{columns}); give a column name or a number of seconds"
            )
        values = pd.to_numeric(frame[deadline], errors="coerce").to_numpy(float)
        bad = np.isnan(values) & frame[deadline].notna().to_numpy()
        if bad.any():
            raise DataError(
                f"deadline column {deadline!r} has non-numeric values at "
                f"{describe_rows(bad, labels)}"
            )
        bad = ~np.isnan(values) & ~(values > 0)
        if bad.any():
            raise DataError(
                f"deadline column {deadline!r} must hold positive seconds; found "
                f"{values[bad][0]:g} at {describe_rows(bad, labels)}"
            )
        return np.where(np.isnan(values), np.inf, values)
    try:
        seconds = float(deadline)
    except (TypeError, ValueError):
        seconds = np.nan
    if not seconds > 0:
        raise DataError(
            f"deadline must be a positive number of seconds or a column name, got "
            f"{deadline!r}"
        )
    return np.full(len(frame), seconds)


def mark_omissions(
    frame: pd.DataFrame, simulator: Simulator, deadline: float | str | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(omitted rows, each row's deadline) for a fit with a deadline: a row whose
    response time is empty or -999 is an omission; a response at or after its
    deadline is an error. Without a deadline, -999 is refused with the hint to give
    one (an empty response time is refused later, with the same hint)."""
    labels = frame.index.to_numpy()
    try:
        time_column, _ = decision_columns(simulator)
    except SbiPluginsError as exc:
        if deadline is None:
            return None, None
        raise DataError(str(exc)) from None
    time = simulator.observable_names[time_column]
    raw = frame[time]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(float)
    if deadline is None:
        bad = values == OMISSION_CODE
        if bad.any():
            raise DataError(
                f"column {time!r} is -999 (HSSM's code for an omission) at "
                f"{describe_rows(bad, labels)}; {DEADLINE_HINT}"
            )
        return None, None
    deadlines = _deadlines(frame, deadline, labels)
    omitted = raw.isna().to_numpy() | (values == OMISSION_CODE)
    bad = omitted & ~np.isfinite(deadlines)
    if bad.any():
        raise DataError(
            f"omissions ({time!r} empty or -999) at {describe_rows(bad, labels)} "
            f"have no deadline in column {deadline!r}; give each its deadline"
        )
    late = ~omitted & (values >= deadlines)
    if late.any():
        first = np.flatnonzero(late)[0]
        raise DataError(
            f"column {time!r} is at or after its deadline at "
            f"{describe_rows(late, labels)} (e.g. {values[first]:g} s against "
            f"{deadlines[first]:g} s): a response after the deadline cannot have "
            "been recorded; check the deadline (seconds) or those rows"
        )
    _refuse_deadlines_in_milliseconds(values[~omitted], deadlines, deadline)
    return omitted, deadlines


DEADLINE_UNIT_RATIO = 100.0
"""A typical deadline more than this many times the slowest response is taken for
milliseconds against response times in seconds (1300 against 1.3 s is 1,000)."""


def _refuse_deadlines_in_milliseconds(
    decided: np.ndarray, deadlines: np.ndarray, deadline: float | str
) -> None:
    """A deadline in milliseconds passes every other check (no response comes
    after it) but makes the omissions impossible, so the fit bends every parameter
    to explain them: refuse it, as the learned likelihood refuses RTs in ms."""
    decided = decided[np.isfinite(decided)]
    finite = deadlines[np.isfinite(deadlines)]
    if not len(decided) or not len(finite):
        return
    typical, slowest = float(np.median(finite)), float(decided.max())
    if typical <= DEADLINE_UNIT_RATIO * slowest:
        return
    fix = (
        f"df[{deadline!r}] / 1000"
        if isinstance(deadline, str)
        else f"deadline={typical / 1000:g}"
    )
    raise DataError(
        f"the deadline ({typical:g}) is more than {DEADLINE_UNIT_RATIO:g} times the "
        f"slowest response ({slowest:g} s): is it in milliseconds? Give it in "
        f"seconds ({fix})"
    )
