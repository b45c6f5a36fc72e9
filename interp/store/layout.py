"""Where things live inside a run group, and the attribute names that describe them.

On-disk layout of one run (a zarr v3 group)::

    <run>/                       group; attrs: ssmlens_format, ssmlens_complete,
                                 ssmlens_writer, created_at, finished_at, config,
                                 metrics, checkpoint
      ssmlens-writer.lock        while a writer holds the run (store.lock)
      batch/                     group; attrs: task, vocab_size, config, roles
        tokens                   int64 [batch, pos]
        loss_mask                bool  [batch, pos]
        roles/<role>             int64 [batch, k]
      cache/<hook name>          one array per hook, dimension_names = dims_for(name)
      results/<a>/<b>            labelled arrays; attrs ssmlens_coords {dim: labels}
      tables/<name>/<column>     one 1-d array per DataFrame column; the group's
                                 attrs keep column order, dtypes and the index

Keys: a name becomes a key by percent-encoding (``urllib.parse.quote`` with no safe
characters) each ``/``-separated segment, plus a leading ``__`` or a bare ``.`` /
``..`` which zarr v3 reserves. Hook names (letters, digits, ``_`` and ``.``) are left
unchanged, so ``cache/blocks.0.mixer.hook_delta`` is the array of that hook. Every
array also records its original name in the ``ssmlens_name`` attribute.

Chunks are files (objects) ``<array>/c.<i>.<j>...`` (zarr's default key encoding with
the "." separator: side by side, not one folder per index).

Writer: ``ssmlens-writer.lock`` (a file, not a zarr node) exists while a writer holds
the run; ``ssmlens_writer`` names that writer (``ssmlens.interp.store.lock``).

Completion: ``ssmlens_complete`` is written False at creation and True by the very
last write of ``RunWriter.finish()``; every array carries ``ssmlens_rows``, the number
of leading rows (axis 0) whose data is on disk, updated only after those rows were
written. A reader that trusts only ``ssmlens_rows`` rows never sees the fill values
of a chunk that a killed writer did not get to.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

FORMAT_VERSION = 1

# Root attributes.
FORMAT_ATTR = "ssmlens_format"
COMPLETE_ATTR = "ssmlens_complete"
ERROR_ATTR = "ssmlens_error"
CREATED_ATTR = "created_at"
FINISHED_ATTR = "finished_at"
CONFIG_ATTR = "config"
METRICS_ATTR = "metrics"
CHECKPOINT_ATTR = "checkpoint"
WRITER_ATTR = "ssmlens_writer"  # {token, host, pid, started} of the one writer (store.lock)

# Array attributes.
NAME_ATTR = "ssmlens_name"
ROWS_ATTR = "ssmlens_rows"
TORCH_DTYPE_ATTR = "ssmlens_torch_dtype"
COORDS_ATTR = "ssmlens_coords"
USER_ATTRS_ATTR = "ssmlens_attrs"
KIND_ATTR = "ssmlens_kind"

# Groups.
BATCH = "batch"
ROLES = "roles"
CACHE = "cache"
RESULTS = "results"
TABLES = "tables"


def escape_segment(name: str) -> str:
    """One path segment -> a valid zarr v3 node name; identity for hook names."""
    if not name:
        raise ValueError("empty names cannot be stored")
    key = quote(name, safe="")
    if key.startswith("__"):  # reserved by the zarr v3 spec
        key = "%5F" + key[1:]
    if key in (".", ".."):
        key = key.replace(".", "%2E")
    return key


def unescape_segment(key: str) -> str:
    return unquote(key)


def escape_path(name: str) -> str:
    """``patching/resid_pre`` -> ``patching/resid_pre``; each segment escaped.

    ``/`` separates levels (results and tables may be grouped this way); a name that
    must keep a literal slash cannot be stored as one entry.
    """
    return "/".join(escape_segment(part) for part in name.split("/"))


def unescape_path(key: str) -> str:
    return "/".join(unescape_segment(part) for part in key.split("/"))
