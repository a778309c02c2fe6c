"""The ingest bus: a durable transport of accepted events between the API and coordinators."""
