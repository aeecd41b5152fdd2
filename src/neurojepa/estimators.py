"""Teacher and student as estimators on arrays: ``fit``, ``transform`` / ``simulate``, ``score``, ``save``, ``load``.

>>> import neurojepa as nj
>>> teacher = nj.Teacher(**{"train.max_epochs": 4}).fit(counts, states, heldout_units=[0, 7, 12])
>>> z = teacher.transform(counts, states)             # (n_bins, D) causal latents, one row per bin
>>> teacher.score(counts, states, gt_latents=truth)  # held-out metrics: rankme, cobps, forecast_r2, gt_r2, ...
>>> student = nj.Student(max_steps=200).fit(counts, z, states)
>>> out = student.simulate(counts)                    # {"spikes": (n_bins * substeps, N), "readout": (n_bins, D)}

Counts are (n_bins, n_units) whole spike counts in bins of ``bin_size`` seconds (``fit(..., bin_size=0.01)``),
binned with :func:`neurojepa.data.binning.bin_spikes` or any binning of your own; states (optional) name each
bin's brain state. There is no second training loop here: ``fit`` wraps the counts in an
:class:`~neurojepa.data.arrays.ArraySession` and calls the pipeline's own training core
(:func:`~neurojepa.teacher.train.fit_teacher`, :func:`~neurojepa.student.train.fit_student` and
:func:`~neurojepa.student.train.finish_readout`); ``score`` calls the pipeline's evaluation
(:func:`~neurojepa.teacher.evaluate.evaluate_teacher`, :func:`~neurojepa.student.evaluate.evaluate_student`).

Options are the pipeline's typed configs (:class:`~neurojepa.teacher.config.TeacherConfig`,
:class:`~neurojepa.student.config.StudentConfig`; every key in docs/config.md under ``teacher.`` and ``student.``),
given as keyword arguments in either of two spellings that mean the same::

    nj.Teacher(**{"train.max_epochs": 2, "model.embed_dim": 16, "loss.replay_dims": 15})
    nj.Teacher(train={"max_epochs": 2}, model={"embed_dim": 16}, loss={"replay_dims": 15})
    nj.Student(max_steps=100, n_exc=128)            # StudentConfig is flat

plus a ``splits`` section, how ``fit`` cuts time into train/val/test blocks, exactly as ``neurojepa prepare``
does (``splits.block_s`` 60 s blocks inside each state, ``splits.fractions`` [0.7, 0.1, 0.2], ``splits.seed``):
training windows come from train blocks, early stopping watches val blocks, ``score`` reports test blocks. A
``config=`` argument takes a YAML file or a config object as the base that keyword options then override.
A typo in a key is an :class:`~neurojepa.errors.InputError` naming the closest valid key.

``save(DIR)`` writes ``DIR/teacher.pt`` (or ``student.pt``), plain tensors loadable with
``torch.load(weights_only=True)``, and ``DIR/teacher.json`` (``student.json``): the resolved options and what the
fit learned about the data (units held in and out, states, bin size). No pickle; ``load(DIR)`` rebuilds the model.

Differences from the pipeline, by design: held-out units for co-smoothing are the ones you name
(``heldout_units``; none by default, so ``eval.heldout_fraction`` is unused), replay pairing needs flash labels
that arrays do not carry (it stays off), and training runs in one process (``train.devices`` 1).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import as_overrides, load_config, to_dict
from .data.arrays import ArraySession, SplitConfig, check_counts
from .data.prepare import PrepareConfig
from .errors import InputError, atomic_path
from .student.config import StudentConfig
from .teacher.config import TeacherConfig
from .version import __version__

BIN_SIZE = PrepareConfig.bin_size  # s: the default bin of counts handed in (prepare's, the one home of 10 ms)


@dataclass
class TeacherOptions(TeacherConfig):
    """The teacher's options (:class:`TeacherConfig`) and how arrays are split into time blocks."""

    splits: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class StudentOptions(StudentConfig):
    """The student's options (:class:`StudentConfig`) and how arrays are split into time blocks."""

    splits: SplitConfig = field(default_factory=SplitConfig)


def _options(schema: type, config, options: dict[str, Any], name: str):
    """Resolve ``config`` (None, a YAML file, or a config object) overridden by keyword ``options``."""
    file, base = None, {}
    if isinstance(config, (str, Path)):
        file = config
    elif config is not None:
        base = to_dict(config)
    return load_config(schema, file, as_overrides(base) + as_overrides(options), where=f"{name} options")


def _write_dir(path: Path, kind: str, meta: dict, write_weights) -> Path:
    """DIR/<kind>.pt (by ``write_weights(file)``) and DIR/<kind>.json, the directory replaced as a whole."""
    with atomic_path(path, directory=True) as tmp:
        write_weights(tmp / f"{kind}.pt")
        (tmp / f"{kind}.json").write_text(json.dumps(meta, indent=2))
    return path


def _read_meta(path: Path, kind: str) -> dict:
    meta_file, weights = path / f"{kind}.json", path / f"{kind}.pt"
    if not meta_file.is_file() or not weights.is_file():
        raise InputError(path, f"not a saved {kind.capitalize()} (needs {kind}.json and {kind}.pt)")
    meta = json.loads(meta_file.read_text())
    if meta.get("estimator") != kind.capitalize():
        raise InputError(meta_file, f"holds a {meta.get('estimator')!r}, not a {kind.capitalize()}")
    return meta


class _Estimator:
    """Shared plumbing: options, the fitted check, the session of arrays handed to a method."""

    _kind = ""
    _schema: type = object

    def __init__(self, config=None, **options):
        self.config = _options(self._schema, config, options, self._kind)

    def _require_fit(self) -> None:
        if not self.is_fitted:
            raise InputError(self._kind, "not fitted yet: call fit() or load() first")

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}({state}; options: {to_dict(self.config)})"


# ------------------------------------------------------------------------------------------------- the teacher
class Teacher(_Estimator):
    """The LeJEPA teacher on counts given as arrays (see the module docstring for options and files).

    Fitted attributes: ``module_`` (the :class:`~neurojepa.teacher.module.TeacherModule`; ``module_.net`` is the
    encoder and predictor), ``heldin_units_`` / ``heldout_units_`` (column indices of counts), ``states_`` (state
    names in code order), ``bin_size_`` (s), ``n_units_``, ``fit_info_`` (train_seconds, epochs, global_step,
    best_val_loss)."""

    _kind = "teacher"
    _schema = TeacherOptions

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "module_", None) is not None

    def fit(self, counts, states=None, heldout_units=None, *, bin_size: float = BIN_SIZE, split=None) -> "Teacher":
        """Train on counts (n_bins, n_units); returns self.

        states: (n_bins,) state name per bin (None: one state; "" = a bin outside every split). heldout_units:
        column indices hidden from the encoder, scored by co-smoothing (``cobps``) in :meth:`score`. split:
        (n_bins,) "train"/"val"/"test"/"" to use your own blocks instead of dealing them (``splits.*``)."""
        from .teacher.train import fit_teacher

        t = self.config.train
        if t.devices != 1 or t.num_nodes != 1:
            raise InputError("train.devices", "nj.Teacher trains in one process; use `neurojepa teach` for DDP")
        session = ArraySession(counts, bin_size, states, split, splits=self.config.splits)
        with tempfile.TemporaryDirectory(prefix="neurojepa-teacher-", ignore_cleanup_errors=True) as work:
            fit = fit_teacher(session, work, self.config, heldout=[] if heldout_units is None else heldout_units)
        self.module_ = fit.module
        self.heldin_units_, self.heldout_units_ = fit.heldin, fit.heldout
        self.states_, self.bin_size_, self.n_units_ = fit.states, session.bin_size, session.n_units
        self.fit_info_ = dict(train_seconds=round(fit.train_seconds, 2), epochs=fit.epochs,
                              global_step=fit.global_step, best_val_loss=fit.best_val_loss)
        return self

    def transform(self, counts, states=None) -> np.ndarray:
        """(n_bins, D) float32 causal latents of counts (n_bins, n_units), same units (columns) as in fit; each row
        depends on that bin and earlier ones only. states are needed only with ``model.state_readin`` or
        a latent centred within each state (``loss.state_centring``, on by default for two or more states)."""
        import pandas as pd

        from .teacher.train import encode_states

        self._require_fit()
        x = check_counts(counts)
        if x.shape[1] != self.n_units_:
            raise InputError("counts", f"the teacher was fit on {self.n_units_} units (columns), got {x.shape[1]}")
        labels = None
        if states is not None:
            labels = pd.DataFrame({"state": np.asarray(states).astype(str)})
        if labels is not None and len(labels) != len(x):
            raise InputError("states", f"need one state per bin ({len(x)}), got {len(labels)}")
        return encode_states(self.module_, np.ascontiguousarray(x[:, self.heldin_units_]), labels, self.states_)

    def fit_transform(self, counts, states=None, heldout_units=None, **kw) -> np.ndarray:
        """:meth:`fit`, then :meth:`transform` of the same counts."""
        return self.fit(counts, states, heldout_units, **kw).transform(counts, states)

    def score(self, counts, states=None, *, split=None, gt_latents=None) -> dict:
        """Held-out metrics of the latents of counts, as the pipeline's ``metrics.json["teacher"]``: read-outs fit
        on train blocks, scored on test blocks (dealt as in fit, so for the training counts these are blocks the
        teacher never trained on). Always: ``rankme``, ``sigreg_heldout``, ``forecast_r2``; with held-out units:
        ``cobps`` (bits/spike); with gt_latents (n_bins, D_true): ``gt_r2``; with several states: cross-state
        scores; with ``eval.baselines``: the same for PCA, raw counts and FA under ``"baselines"``."""
        from .teacher.evaluate import evaluate_teacher

        self._require_fit()
        session = ArraySession(counts, self.bin_size_, states, split, gt_latents, self.config.splits)
        z = self.transform(session.load_counts(), states)
        return evaluate_teacher(self.module_.net, z, session, session.load_counts(), self.heldin_units_,
                                self.heldout_units_, self.config)

    def save(self, path) -> Path:
        """Write DIR/teacher.pt (state dict, and the state centres of a latent centred within each state) and
        DIR/teacher.json (options, units, states, bin size); returns DIR."""
        import torch

        self._require_fit()
        path = Path(path)
        meta = dict(estimator="Teacher", version=__version__, config=to_dict(self.config), n_units=self.n_units_,
                    heldin_units=self.heldin_units_.tolist(), heldout_units=self.heldout_units_.tolist(),
                    states=list(self.states_), bin_size=self.bin_size_, fit_info=self.fit_info_)
        blob = {"state_dict": self.module_.state_dict()}
        if self.module_.state_centres is not None:
            blob["state_centres"] = torch.as_tensor(self.module_.state_centres)
        return _write_dir(path, "teacher", meta, lambda f: torch.save(blob, f))

    @classmethod
    def load(cls, path) -> "Teacher":
        """A teacher saved by :meth:`save` (weights loaded with ``torch.load(weights_only=True)``)."""
        import torch

        from .teacher.module import TeacherModule

        path = Path(path)
        meta = _read_meta(path, "teacher")
        est = cls(**meta["config"])
        module = TeacherModule(est.config, n_units=len(meta["heldin_units"]), n_states=max(1, len(meta["states"])))
        blob = torch.load(path / "teacher.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(blob["state_dict"])
        if "state_centres" in blob:
            module.state_centres = blob["state_centres"].numpy()
        module.net.eval()
        est.module_ = module
        est.heldin_units_ = np.asarray(meta["heldin_units"], dtype=np.int64)
        est.heldout_units_ = np.asarray(meta["heldout_units"], dtype=np.int64)
        est.states_, est.bin_size_, est.n_units_ = list(meta["states"]), float(meta["bin_size"]), int(meta["n_units"])
        est.fit_info_ = meta.get("fit_info", {})
        return est


# ------------------------------------------------------------------------------------------------- the student
class Student(_Estimator):
    """The E/I spiking student on counts and teacher latents given as arrays (see the module docstring).

    Fitted attributes: ``net_`` (the :class:`~neurojepa.student.network.StudentNet`, an ``nn.Module``),
    ``fit_info_`` (train_seconds, global_step, time_capped)."""

    _kind = "student"
    _schema = StudentOptions

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "net_", None) is not None

    def fit(self, counts, latents, states=None, *, bin_size: float = BIN_SIZE, split=None) -> "Student":
        """Distil latents (n_bins, D) (e.g. ``Teacher.transform(counts)``) into a spiking network driven by counts
        (n_bins, n_in): training windows from train blocks, validation on val blocks (as ``fit`` of the teacher
        deals them), then the readout refit on train bins. Returns self."""
        from .runtime import set_torch_threads
        from .student.evaluate import train_mask
        from .student.train import check_latents, finish_readout, fit_student

        cfg = self.config
        set_torch_threads(cfg.threads)
        session = ArraySession(counts, bin_size, states, split, splits=cfg.splits)
        x = session.load_counts()
        lat = check_latents(latents, session.n_bins)
        with tempfile.TemporaryDirectory(prefix="neurojepa-student-", ignore_cleanup_errors=True) as work:
            net = fit_student(x, lat, cfg, Path(work), bin_size=session.bin_size, train=session.segments("train"),
                              val=session.segments("val"))
        finish_readout(net, x, lat, train_mask(session.split, None, None, cfg.burn_in), cfg)
        self.net_ = net
        self.fit_info_ = dict(train_seconds=round(net.train_seconds, 1), global_step=net.global_step,
                              time_capped=bool(net.time_capped))
        return self

    def _counts(self, counts) -> np.ndarray:
        x = check_counts(counts)
        if x.shape[1] != self.net_.n_in:
            raise InputError("counts", f"the student was fit on {self.net_.n_in} units (columns), got {x.shape[1]}")
        return x

    def simulate(self, counts) -> dict[str, np.ndarray]:
        """Drive the network with counts (n_bins, n_in): ``{"spikes": (n_bins * substeps, N) uint8`` (one row per
        ``dt`` step, E neurons first), ``"readout": (n_bins, D) float32}``. As in evaluation, time runs in causal
        chunks of ``eval_chunk`` bins, each warmed up on its ``eval_warmup`` bins of past input."""
        from .student.evaluate import simulate_chunked

        self._require_fit()
        spikes, readout = simulate_chunked(self.net_, self._counts(counts), self.config.eval_chunk,
                                           self.config.eval_warmup)
        return {"spikes": spikes, "readout": readout}

    def score(self, counts, latents, states=None, *, split=None) -> dict:
        """Held-out metrics, as the pipeline's ``metrics.json["student"]``: CCA of readout and latents fit on train
        blocks, scored on test blocks (``cca_heldout_mean`` beside a time-shifted null), firing statistics on test
        blocks (``rate_hz_median``, ``frac_in_band``, ``cv_isi_median``, ...) and ``dale_violations``."""
        from .student.evaluate import evaluate_student
        from .student.train import check_latents

        self._require_fit()
        session = ArraySession(self._counts(counts), self.net_.bin_size, states, split,
                               splits=self.config.splits)
        lat = check_latents(latents, session.n_bins)
        metrics, _ = evaluate_student(self.net_, session.load_counts(), lat, session.split, self.config,
                                      session.labels)
        metrics.pop("_report", None)
        return metrics

    def save(self, path) -> Path:
        """Write DIR/student.pt (state dict, sizes, bin size) and DIR/student.json (options); returns DIR."""
        from .student.train import save_student

        self._require_fit()
        path = Path(path)
        meta = dict(estimator="Student", version=__version__, config=to_dict(self.config), fit_info=self.fit_info_)
        return _write_dir(path, "student", meta, lambda f: save_student(self.net_, f))

    @classmethod
    def load(cls, path) -> "Student":
        """A student saved by :meth:`save` (weights loaded with ``torch.load(weights_only=True)``)."""
        from .student.train import student_from_file

        path = Path(path)
        meta = _read_meta(path, "student")
        est = cls(**meta["config"])
        est.net_ = student_from_file(path / "student.pt", est.config)
        est.fit_info_ = meta.get("fit_info", {})
        return est
