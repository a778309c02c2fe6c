"""The query plane: resolve a snapshot, wait for the barrier, bind tables, run sandboxed SQL."""
