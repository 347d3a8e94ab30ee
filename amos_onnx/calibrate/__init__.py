"""Calibrate: run the model on data and keep a bounded sample of every site's input (reservoir)."""
