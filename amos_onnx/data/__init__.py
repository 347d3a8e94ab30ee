"""Data: calibration and validation inputs (dataset), model input checks (inputs), image folders (images), progress."""
