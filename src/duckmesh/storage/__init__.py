"""Object storage for data files: the ``ObjectStore`` port and its adapters."""
