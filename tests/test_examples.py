"""The user-facing examples: examples/demo.sh and the synthetic data they train on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsunet_hf.synthetic import make_camouflage_dataset, make_textured_shapes_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("make", [make_camouflage_dataset, make_textured_shapes_dataset], ids=["camouflage", "shapes"])
def test_a_smaller_dataset_written_over_a_larger_one_has_only_its_own_pairs(tmp_path, make):
    folder = tmp_path / "data"
    make(folder, 3, 32, seed=0)
    (folder / "images" / "mine.png").write_bytes(b"")  # not the generator's: kept
    make(folder, 2, 32, seed=0)
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["0000.png", "0001.png", "mine.png"]
    assert sorted(p.name for p in (folder / "masks").iterdir()) == ["0000.png", "0001.png"]


def _run_demo_sh(tmp_path: Path, torch_version: str | None) -> str:
    """examples/demo.sh with `python` and `dsunet-hf` stubbed: what it would install and run, given an installed
    torch of ``torch_version`` (None: no torch)."""
    fake = tmp_path / "site"
    (fake / "torch").mkdir(parents=True)
    body = f"__version__ = {torch_version!r}\n" if torch_version else "raise ImportError('no torch')\n"
    (fake / "torch" / "__init__.py").write_text(body)
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    # `python -c` runs for real (on the fake torch); everything else (pip, the demo) is only logged.
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-c" ]; then exec "{sys.executable}" "$@"; fi\n'
                                    f'echo "python $*" >> "{log}"\n')
    (bin_dir / "dsunet-hf").write_text(f'#!/usr/bin/env bash\necho "in $(pwd -P): dsunet-hf $*" >> "{log}"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(fake)}
    subprocess.run(["bash", str(REPO / "examples" / "demo.sh"), "--data", "mine"], env=env, check=True, timeout=60,
                   cwd=tmp_path)
    return log.read_text()


@pytest.mark.parametrize("torch_version, installs_torch", [
    ("2.14.1+cu128", False), ("2.13.0+cpu", False), ("2.5.0", False), (None, True), ("2.4.1", True), ("2.15.0", True),
])
def test_demo_sh_keeps_a_torch_in_range_and_runs_the_demo_where_started(tmp_path, torch_version, installs_torch):
    calls = _run_demo_sh(tmp_path, torch_version)
    assert ("install --quiet torch==2.13.0" in calls) == installs_torch, calls
    installed = calls.splitlines()[-2].split()
    assert installed[:6] == ["python", "-m", "pip", "install", "--quiet", "-e"] and installed[6].endswith("[dev]")
    assert Path(installed[6].removesuffix("[dev]")).resolve() == REPO  # the repository, not the folder started in
    # started elsewhere: the user's relative --data is theirs (the demo runs in their folder), the outputs the repo's
    where, command = calls.splitlines()[-1].split(": ", 1)
    assert where == f"in {tmp_path.resolve()}" and command.endswith(" --data mine")
    assert Path(command.split()[3]).resolve() == REPO / "outputs" / "demo"
