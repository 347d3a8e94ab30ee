"""Report: what a conversion did (conversion), both models run and compared (validate), spike counts (spikes),
operation costs (costs), and the report files and pictures (files)."""
