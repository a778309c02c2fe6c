"""The commit plane: claim events, write Parquet, publish snapshots."""
