"""python -m amos_onnx: the command line."""

from .cli import main

main()
