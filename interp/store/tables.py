"""Tidy tables (pandas DataFrames) stored column-wise: ``tables/<name>/<column>``.

Each column is a 1-d zarr array with ``dimension_names=("row",)``; the table's group
attributes keep the column order, the pandas dtype of each column and which columns
were the index, so ``read_table(write_table(df)) == df`` including dtypes:

- numeric and bool columns: stored as they are;
- datetime / timedelta: int64 counts of their unit (+ the time zone, stored as UTC);
- categorical: integer codes + the categories in the array's attributes;
- strings (object, ``string``) and nullable extension dtypes (``Int64``, ``boolean``):
  values with missing entries filled in, and the missing rows listed in attributes.

A non-default index is stored as ordinary columns (``reset_index``) and restored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ssmlens.interp.store.encoding import to_json

TABLE_KIND = "table"


def _is_default_index(index: pd.Index) -> bool:
    return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None


def flatten(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The frame with its index as columns, and the group attributes to restore it."""
    if df.columns.duplicated().any():
        raise ValueError(f"duplicate column names: {list(df.columns[df.columns.duplicated()])}")
    index_names = None
    index_columns: list[Any] = []
    if not _is_default_index(df.index):
        index_names = [to_json(n) for n in df.index.names]
        before = set(df.columns)
        df = df.reset_index()
        index_columns = [c for c in df.columns if c not in before]
    attrs = {
        "ssmlens_kind": TABLE_KIND,
        "columns": [to_json(c) for c in df.columns],
        "n_rows": len(df),
        "index_columns": [to_json(c) for c in index_columns],
        "index_names": index_names,
    }
    return df, attrs


def encode_column(name: Any, s: pd.Series) -> tuple[np.ndarray, dict[str, Any]]:
    """A column -> (1-d numpy values, array attributes describing how to decode them)."""
    dtype = s.dtype
    attrs: dict[str, Any] = {"pandas_dtype": str(dtype)}
    if isinstance(dtype, pd.CategoricalDtype):
        attrs["categories"] = to_json(list(dtype.categories))
        attrs["ordered"] = bool(dtype.ordered)
        return s.cat.codes.to_numpy(), attrs
    if isinstance(dtype, pd.DatetimeTZDtype):
        attrs["tz"], attrs["unit"] = str(dtype.tz), dtype.unit
        return s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().view("int64"), attrs
    if isinstance(dtype, np.dtype) and dtype.kind in "mM":
        return s.to_numpy().view("int64"), attrs
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc":
        return s.to_numpy(), attrs
    # Strings and nullable extension dtypes: values plus the list of missing rows.
    missing = s.isna().to_numpy()
    attrs["missing"] = np.flatnonzero(missing).tolist()
    if pd.api.types.is_bool_dtype(dtype):
        return s.to_numpy(dtype=bool, na_value=False), attrs
    if pd.api.types.is_numeric_dtype(dtype):
        numpy_dtype = getattr(dtype, "numpy_dtype", np.dtype("float64"))
        return s.to_numpy(dtype=numpy_dtype, na_value=0), attrs
    present = s[~missing]
    bad = present[~present.map(lambda v: isinstance(v, str))]
    if len(bad):
        raise TypeError(
            f"column {name!r} holds {type(bad.iloc[0]).__name__} values (e.g. {bad.iloc[0]!r}); "
            "tables store numbers, bools, datetimes, categoricals and strings: convert it first"
        )
    values = np.empty(len(s), dtype=object)
    values[:] = s.where(~missing, "").to_numpy(dtype=object)
    return values, attrs


def decode_column(values: np.ndarray, attrs: dict[str, Any]) -> pd.Series:
    """Inverse of ``encode_column``."""
    dtype = attrs["pandas_dtype"]
    if "categories" in attrs:
        cat = pd.Categorical.from_codes(values, categories=attrs["categories"], ordered=attrs["ordered"])
        return pd.Series(cat)
    if "tz" in attrs:
        utc = pd.Series(values.view(f"datetime64[{attrs['unit']}]")).dt.tz_localize("UTC")
        return utc.dt.tz_convert(attrs["tz"])
    if "missing" not in attrs:
        if dtype.startswith(("datetime64", "timedelta64")):
            return pd.Series(values.view(dtype))
        return pd.Series(values, dtype=dtype)
    s = pd.Series(values, dtype=object if dtype in ("object", "str") else None)
    if attrs["missing"]:
        s = s.astype(object)
        s.iloc[attrs["missing"]] = None
    return s.astype(dtype)


def unflatten(columns: dict[Any, pd.Series], attrs: dict[str, Any]) -> pd.DataFrame:
    """Columns (in stored order) + group attributes -> the original DataFrame."""
    df = pd.DataFrame({c: columns[c] for c in attrs["columns"]}, columns=attrs["columns"])
    if attrs["index_columns"]:
        df = df.set_index(attrs["index_columns"])
        df.index.names = attrs["index_names"]
    return df
