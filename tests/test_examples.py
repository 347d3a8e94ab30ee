"""Every command in an example README runs, and the digits demo keeps its accuracy."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

CLI = shutil.which("amos-onnx", path=str(Path(sys.executable).parent)) or "amos-onnx"


def readme_commands(readme: Path) -> list[list[str]]:
    """The amos-onnx command lines in a README's code blocks."""
    blocks = re.findall(r"```\n(.*?)```", readme.read_text(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("amos-onnx ")]


def test_digits_readme_commands_run_and_keep_accuracy() -> None:
    out = ROOT / "examples/digits/out"
    out.mkdir(exist_ok=True)
    (out / "digits_spiking.onnx").unlink(missing_ok=True)
    outputs = []
    commands = readme_commands(ROOT / "examples/digits/README.md")
    assert [c[1] for c in commands] == ["inspect", "convert", "validate"]
    for command in commands:
        done = subprocess.run([CLI] + command[1:], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "Relu: 3 would convert" in outputs[0]
    assert "Relu: 3 converted" in outputs[1]
    match = re.search(r"accuracy: original ([\d.]+)%, spiking ([\d.]+)%", outputs[2])
    assert match, outputs[2]
    original, spiking = float(match.group(1)), float(match.group(2))
    assert abs(original - spiking) <= 0.5
    assert re.search(r"^PASSED logits:", outputs[2], re.M)
    assert re.search(r"mean spikes per gate: [\d.]+", outputs[2])


@pytest.mark.parametrize("readme", sorted(ROOT.glob("examples/*/README.md")), ids=lambda p: p.parent.name)
def test_every_example_readme_has_commands(readme: Path) -> None:
    assert readme_commands(readme), f"{readme} shows no amos-onnx command"
