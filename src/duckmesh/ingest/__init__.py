"""Accepting writes: validate a request, then publish its events to the bus in one step."""
