"""``neurojepa export-nwb RUN_DIR --out results.nwb [--into-copy]``: a finished run's results as one NWB file.

It only reads what the stages saved (data flows data <- teacher/student <- export) and writes with pynwb::

    /units                      one row per unit of the recording (ids = unit ids) with the prepare stage's QC
                                decisions (prepare/dataset.h5 /qc_units) as columns:
                                  neurojepa_qc_kept    bool, the unit is in the prepared dataset
                                  neurojepa_qc_reason  str, '' when kept, else the first filter it failed (qc.py)
                                  neurojepa_qc_rate_hz float Hz, the rate the filters saw (NaN: unknown)
                                a fresh file also has `area` and no spike times (those stay in the recording)
    /processing/neurojepa       description: neurojepa version, run directory and run.yaml (input and config)
      teacher_latents           TimeSeries (n_bins, D) float32 (teacher/latents.npz): row k is the causal latent
                                of bin k = [t_start + k bin_size, t_start + (k + 1) bin_size), computed from the
                                counts up to the end of that bin; starting_time = t_start, rate = 1 / bin_size
      student_readout           TimeSeries (n_bins, D) float32 (student/readout.npz), the same clock
      student_units             Units, one row per student neuron (ids 0..N-1, excitatory first; student/spikes.npz):
                                spike_times at the centre of the dt step that fired, obs_intervals = the held-out
                                chunks that were simulated (the same for every neuron), resolution = dt, column
                                `excitatory`. Left out, with a note in the description, for a run whose student
                                stage predates spikes.npz.

Every time is on the recording's clock (s), as in the input NWB file. Two modes:

* fresh (default): a new file holding only the above; ``session_start_time`` is the input file's, so that times
  line up when both are opened;
* ``into_copy=True`` (``--into-copy``): the run's input NWB file is copied and the above added to it (its units
  table gains the QC columns); the copy keeps the input's identifier.

The output is written under a temporary name and renamed when complete (:func:`~neurojepa.errors.atomic_path`).
Check it with ``pynwb.validate(path=...)`` (tests/test_export_nwb.py does, and reads every array back).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import InputError, atomic_path
from .version import __version__

if TYPE_CHECKING:
    from .student.spikes_file import StudentSpikes

log = logging.getLogger(__name__)

MODULE = "neurojepa"  # the processing module's name
QC_COLUMNS = {
    "neurojepa_qc_kept": "neurojepa QC: True if the unit was kept for modelling",
    "neurojepa_qc_reason": "neurojepa QC: '' if kept, else the first filter the unit failed",
    "neurojepa_qc_rate_hz": "neurojepa QC: firing rate (Hz) the filters saw; NaN if unknown",
}
_STAGES = ("prepare", "teacher", "student")
_FILES = ("prepare/dataset.h5", "teacher/latents.npz", "student/readout.npz")
_UNKNOWN_START = datetime(2000, 1, 1, tzinfo=timezone.utc)


@dataclass
class _Run:
    """What the export needs from a finished run directory."""

    path: Path
    run_yaml: str
    input_nwb: Path
    session_id: str
    bin_size: float
    t_start: float
    latents: np.ndarray  # (n_bins, D) float32
    readout: np.ndarray  # (n_bins, D) float32
    qc_units: pd.DataFrame  # index unit_id; area, rate_hz, reason
    spikes: StudentSpikes | None  # None when the run's student stage did not save them


def _stage_complete(run_dir: Path, stage: str) -> bool:
    rec = run_dir / ".stages" / f"{stage}.json"
    try:
        return bool(json.loads(rec.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def read_run(run_dir: str | Path) -> _Run:
    """Load and cross-check a finished run directory (InputError, one line, if it is not one)."""
    from omegaconf import OmegaConf

    from .data.dataset import PreparedSession, read_table
    from .student.spikes_file import SPIKES_FILE, read_student_spikes

    d = Path(run_dir)
    if not (d / "run.yaml").is_file():
        raise InputError(d, "not a run directory (no run.yaml); make one with `neurojepa run`")
    missing = [f"{s} stage" for s in _STAGES if not _stage_complete(d, s)]
    missing += [f for f in _FILES if not (d / f).is_file() and f.split("/")[0] + " stage" not in missing]
    if missing:
        raise InputError(d, f"not a finished run (missing: {', '.join(missing)}); finish it with `neurojepa run`")
    run_yaml = (d / "run.yaml").read_text()
    saved_input = OmegaConf.to_container(OmegaConf.load(d / "run.yaml")).get("input")
    input_nwb = Path(saved_input) if saved_input else d / "simulate" / "session.nwb"

    ps = PreparedSession.load(d / "prepare")
    try:
        qc_units = read_table(ps.h5["qc_units"])
        bin_size, t_start, n_bins, session_id = ps.bin_size, ps.t_start, ps.n_bins, ps.session_id
    finally:
        ps.close()
    latents = _per_bin(d / "teacher" / "latents.npz", "latents", n_bins, bin_size)
    readout = _per_bin(d / "student" / "readout.npz", "readout", n_bins, bin_size)
    spikes = read_student_spikes(d / "student" / SPIKES_FILE) if (d / "student" / SPIKES_FILE).is_file() else None
    return _Run(d, run_yaml, input_nwb, session_id, bin_size, t_start, latents, readout, qc_units, spikes)


def _per_bin(file: Path, key: str, n_bins: int, bin_size: float) -> np.ndarray:
    """``file[key]``, (n_bins, D) float32, checked against the prepared dataset's bins."""
    with np.load(file, allow_pickle=False) as z:
        a = np.asarray(z[key], dtype=np.float32)
        if a.ndim != 2 or len(a) != n_bins:
            raise InputError(file, f"{key} of shape {a.shape} do not match the prepared {n_bins} bins")
        if "bin_size" in z and abs(float(z["bin_size"]) - bin_size) > 1e-12:
            raise InputError(file, f"bin_size {float(z['bin_size'])} differs from the prepared {bin_size}")
    return a


# ------------------------------------------------------------------------------------------------ NWB pieces
def _qc_values(qc: pd.DataFrame, unit_ids: np.ndarray) -> dict[str, np.ndarray | list]:
    """The QC columns for units ``unit_ids`` (a unit the prepare stage never saw: not kept, reason says so)."""
    q = qc.reindex(np.asarray(unit_ids, dtype=np.int64))
    seen = q["reason"].notna().to_numpy()
    reason = np.where(seen, q["reason"].astype(object), "not in the prepared dataset's unit table")
    return {"neurojepa_qc_kept": seen & (reason == ""),
            "neurojepa_qc_reason": [str(r) for r in reason],
            "neurojepa_qc_rate_hz": q["rate_hz"].to_numpy(dtype=np.float64)}


def _series(name: str, data: np.ndarray, run: _Run, what: str):
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import TimeSeries

    return TimeSeries(name=name, data=H5DataIO(data, compression="gzip", chunks=True), unit="a.u.",
                      starting_time=run.t_start, rate=1.0 / run.bin_size,
                      description=f"{what}, (n_bins, {data.shape[1]}) float32: row k belongs to bin "
                                  f"[t_start + k * {run.bin_size:g} s, t_start + (k + 1) * {run.bin_size:g} s) "
                                  "and is causal (computed from spikes up to the end of its bin)")


def _student_units(sp: StudentSpikes):
    from pynwb.misc import Units

    units = Units(name="student_units", resolution=sp.dt,
                  description=f"the spiking student's neurons (ids 0..{sp.n_neurons - 1}, the first {sp.n_exc} "
                              "excitatory) on held-out test chunks: spike_times at the centre of the "
                              f"{sp.dt * 1e3:g} ms step that fired, obs_intervals = the {len(sp.chunk_start_bin)} "
                              f"simulated chunks of {sp.chunk_bins} bins (each after its own warm-up)")
    units.add_column(name="excitatory", description="True for excitatory neurons (outgoing weights >= 0)")
    intervals = sp.chunk_intervals()
    for i, t in enumerate(sp.spike_times()):
        units.add_unit(id=i, spike_times=t, obs_intervals=intervals, excitatory=bool(i < sp.n_exc))
    return units


def _module(run: _Run):
    from pynwb import ProcessingModule

    note = ("" if run.spikes is not None else " The student's spikes are not included: this run's student stage "
            "predates spikes.npz (delete .stages/student.json and rerun `neurojepa run` to make them).")
    mod = ProcessingModule(name=MODULE, description=(
        f"neurojepa {__version__} results of run {run.path.resolve()} (session {run.session_id}); times in s on "
        f"the recording's clock, {run.bin_size * 1e3:g} ms bins.{note}\nrun.yaml:\n{run.run_yaml}"))
    mod.add(_series("teacher_latents", run.latents, run, "LeJEPA teacher latents (teacher/latents.npz)"))
    mod.add(_series("student_readout", run.readout, run, "spiking student's read-out of the teacher latents "
                                                          "(student/readout.npz)"))
    if run.spikes is not None:
        mod.add(_student_units(run.spikes))
    return mod


def _start_time(nwb_path: Path) -> datetime | None:
    """The input file's session_start_time, or None when it cannot be read."""
    import h5py

    try:
        with h5py.File(nwb_path, "r") as f:
            s = f["session_start_time"][()]
        d = datetime.fromisoformat(s.decode() if isinstance(s, bytes) else str(s))
    except (OSError, KeyError, ValueError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def _fresh_file(run: _Run):
    from hdmf.common import ElementIdentifiers, VectorData
    from pynwb import NWBFile
    from pynwb.misc import Units

    start = _start_time(run.input_nwb)
    ident = hashlib.sha256(run.run_yaml.encode()).hexdigest()[:12]
    nwb = NWBFile(session_description=f"neurojepa {__version__} results of run {run.path.name} "
                                      f"(session {run.session_id})" + (
                                          "" if start else "; the input's session_start_time was not readable"),
                  identifier=f"neurojepa-{run.session_id}-{ident}", session_start_time=start or _UNKNOWN_START,
                  file_create_date=start or _UNKNOWN_START, source_script="neurojepa export-nwb",
                  source_script_file_name="neurojepa.export_nwb")
    ids = run.qc_units.index.to_numpy(np.int64)
    cols = [VectorData(name="area", description="brain area", data=[str(a) for a in run.qc_units["area"]])]
    cols += [VectorData(name=k, description=QC_COLUMNS[k], data=v) for k, v in _qc_values(run.qc_units, ids).items()]
    nwb.units = Units(name="units", description=f"units of {run.input_nwb.name} with neurojepa's QC decisions "
                                                "(spike times are in that file)",
                      id=ElementIdentifiers(name="id", data=ids), columns=cols)
    nwb.add_processing_module(_module(run))
    return nwb


def export_nwb(run_dir: str | Path, out: str | Path, into_copy: bool = False) -> Path:
    """Write RUN_DIR's results to ``out`` (a fresh file, or a copy of the run's input NWB with ``into_copy``);
    see the module docstring for the layout. Returns the path. InputError for a run that is not finished, a
    missing input file (``into_copy``) or an input that already holds a ``neurojepa`` module."""
    from pynwb import NWBHDF5IO

    run = read_run(run_dir)
    out = Path(out)
    if out.resolve() == run.input_nwb.resolve():
        raise InputError(out, "is the run's input recording; choose another --out")
    if into_copy and not run.input_nwb.is_file():
        raise InputError(run.input_nwb, "the run's input NWB file is gone; export without --into-copy")
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")  # the temporary name ends in .tmp
        if into_copy:
            shutil.copyfile(run.input_nwb, tmp)
            _add_to_copy(tmp, run)
        else:
            with NWBHDF5IO(str(tmp), "w") as io:
                io.write(_fresh_file(run))
    log.info("export-nwb: wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _add_to_copy(path: Path, run: _Run) -> None:
    """Add the QC columns and the neurojepa module to the NWB file at ``path`` (a copy of the run's input)."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        if MODULE in nwb.processing:
            raise InputError(run.input_nwb, f"already holds a '{MODULE}' processing module (an exported file?)")
        if nwb.units is None:
            raise InputError(run.input_nwb, "has no units table to add the QC columns to")
        clash = sorted(set(QC_COLUMNS) & set(nwb.units.colnames))
        if clash:
            raise InputError(run.input_nwb, f"its units table already has {', '.join(clash)}")
        for name, values in _qc_values(run.qc_units, np.asarray(nwb.units.id[:])).items():
            nwb.units.add_column(name=name, description=QC_COLUMNS[name], data=values)
        nwb.add_processing_module(_module(run))
        io.write(nwb)
