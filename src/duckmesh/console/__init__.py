"""The web console's static files (served by duckmesh.api.console)."""
