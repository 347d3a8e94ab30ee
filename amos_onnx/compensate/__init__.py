"""Compensation: the spiking network's accumulated error taken back where the network allows it."""
