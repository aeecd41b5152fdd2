"""The Python face of neurojepa, mirroring the command line for notebook users.

>>> import neurojepa as nj
>>> res = nj.run(out="runs/demo")                  # the main job on the built-in simulated session
>>> res.metrics["student"]["cca_heldout_mean"]     # every number of metrics.json
>>> z = res.teacher_latents()                      # (n_bins, 32) teacher latents for every 10 ms bin
>>> ds = res.dataset()                             # the prepared dataset: counts, labels, splits, ground truth
>>> net = res.student()                            # the trained spiking student (an nn.Module)

``nj.load_run(DIR)`` opens the results of an earlier run (from the CLI or Python) without running anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError


@dataclass
class RunResult:
    """The results of one run directory; everything is read lazily from the saved files."""

    path: Path

    @property
    def metrics(self) -> dict:
        """The merged metrics.json: {"run", "data", "teacher", "student"}."""
        return json.loads((self.path / "metrics.json").read_text())

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def config(self):
        """The resolved :class:`~neurojepa.pipeline.RunConfig` of the run."""
        from omegaconf import OmegaConf

        from .pipeline import load_run_config

        saved = OmegaConf.load(self.path / "run.yaml")
        overrides = [f"{k}={json.dumps(v)}" for k, v in _flatten(OmegaConf.to_container(saved.config)).items()]
        return load_run_config(None, overrides)

    def dataset(self):
        """The prepared dataset (:class:`~neurojepa.data.dataset.PreparedSession`); close it when done."""
        from .data.dataset import PreparedSession

        return PreparedSession.load(self.path / "prepare")

    def teacher_latents(self) -> np.ndarray:
        """(n_bins, D) float32 causal teacher latents, one row per bin of :meth:`dataset`."""
        with np.load(self.path / "teacher" / "latents.npz") as f:
            return f["latents"]

    def student_readout(self) -> np.ndarray:
        """(n_bins, D) float32 student readout, one row per bin of :meth:`dataset`."""
        with np.load(self.path / "student" / "readout.npz") as f:
            return f["readout"]

    def student(self):
        """The trained spiking student (:class:`~neurojepa.student.network.StudentNet`), loaded weights-only."""
        from .student.train import load_student

        return load_student(self.path / "student")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(input: str | Path | None = None, out: str | Path = "runs/demo", config: str | Path | None = None,
        overrides: Sequence[str] = (), force: bool = False) -> RunResult:
    """Run the whole pipeline, like ``neurojepa run [INPUT] --out OUT [--config CONFIG] [key=value ...]``."""
    from .pipeline import load_run_config
    from .pipeline import run as run_pipeline

    return RunResult(Path(run_pipeline(out, load_run_config(config, overrides), input, force=force)))


def load_run(out: str | Path) -> RunResult:
    """Open the results of a finished run directory."""
    path = Path(out)
    if not (path / "metrics.json").is_file():
        raise InputError(path, "not a finished run directory (no metrics.json)")
    return RunResult(path)
