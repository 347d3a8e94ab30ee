"""Validation, reports and calibration in shards on Ray actors (the `ray` extra): each actor holds its own
onnxruntime sessions, measures whole shards of the data and returns figures that merge exactly on the driver."""
