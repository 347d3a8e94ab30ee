"""Fit: every site's gate (sites, channels), the fitter (search, blocks, starts, kernel), the shipped gates
(library), and the network-aware refits (focus)."""
