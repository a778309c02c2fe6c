"""DuckMesh: many HTTP writers -> snapshot-versioned Parquet tables -> DuckDB SQL."""

__version__ = "0.1.0"
