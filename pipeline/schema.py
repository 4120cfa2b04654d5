"""Arrow schemas of the tables that pass between stages (their columns: README, "Output layout")."""
from __future__ import annotations

import pyarrow as pa

# Output of read + validate + normalize: one row per record read. Valid rows have reason = null;
# quarantined rows have text = null and carry the reason and a truncated copy of the raw record.
READ_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("category", pa.string()),
    ("code_lang", pa.string()),
    ("path", pa.string()),
    ("source", pa.string()),
    ("position", pa.int64()),
    ("n_chars", pa.int64()),
    ("meta", pa.string()),
    ("reason", pa.string()),
    ("raw", pa.string()),
])

DOC_COLUMNS = ["id", "text", "category", "code_lang", "path", "source", "position", "n_chars", "meta"]

# Cleaned documents, as written under <output>/cleaned/category=…/lang=…/ (columns kept in the files too).
CLEANED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("category", pa.string()),
    ("lang", pa.string()),
    ("lang_score", pa.float32()),
    ("code_lang", pa.string()),
    ("source", pa.string()),
    ("position", pa.int64()),
    ("path", pa.string()),
    ("meta", pa.string()),
])

QUARANTINE_SCHEMA = pa.schema([
    ("source_file", pa.string()),
    ("position", pa.int64()),
    ("reason", pa.string()),
    ("raw", pa.string()),
    ("category", pa.string()),
    ("n_chars", pa.int64()),
])

# Each side located in its input as cleaned rows are: input ids may repeat across sources.
DUPLICATES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("position", pa.int64()),
    ("duplicate_of", pa.string()),
    ("duplicate_of_source", pa.string()),
    ("duplicate_of_position", pa.int64()),
    ("stage", pa.string()),
])

# Hive's spelling of a null partition value; pyarrow and DuckDB read it back as null.
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
