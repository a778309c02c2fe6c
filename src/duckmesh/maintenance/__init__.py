"""The maintenance plane: compaction, retention/GC, integrity validation."""
