"""python -m amos_onnx: the command line."""

from amos_onnx.cli import main

main()
