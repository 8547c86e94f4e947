"""The data contract between pipeline and trainer: Arrow schemas, metadata, validation."""
from textok.schemas.common import (SCHEMA_VERSION, SchemaError, list_parquet, read_meta, validate,
                            validate_file, write_table_atomic)

__all__ = ["SCHEMA_VERSION", "SchemaError", "list_parquet", "read_meta", "validate", "validate_file",
           "write_table_atomic"]
