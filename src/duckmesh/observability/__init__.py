"""Metrics, JSON logging and trace ids."""
