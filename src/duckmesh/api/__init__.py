"""HTTP API: FastAPI app factory, auth, one router per area, error mapping."""
