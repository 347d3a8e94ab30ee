"""Rewrite: the only stage that edits the graph (graph), and the converted node in its emission forms (emit)."""
