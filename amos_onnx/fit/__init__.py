"""Fit: every site's gate (sites, site_fit, channels), the fitter (search, blocks, starts, kernel), the shipped gates
(library), and the network-aware refits (focus)."""
