"""The ``neurojepa`` command line: thin wrappers over library functions, one subcommand per pipeline step.

Expected problems (:class:`~neurojepa.errors.InputError`) print one line and exit with code 2; ``-v`` turns on
logging (``-vv`` for debug).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from .errors import EXIT_INPUT_ERROR, InputError
from .version import __version__

log = logging.getLogger("neurojepa")


# --------------------------------------------------------------------------------------------- subcommands
# Each subcommand is a pair: `_add_<name>(subparsers)` declares its arguments and sets `func=_run_<name>`.
# Imports of heavy modules stay inside `_run_*` so that `neurojepa --help` is instant.


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write a simulated VBN-like session with known ground truth to NWB")
    p.add_argument("--out", required=True, help="output .nwb file (a directory with --sessions)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sessions", type=int, default=None, metavar="K",
                   help="K sessions sharing latent dynamics, different neurons: OUT/session_00.nwb ... (docs/scale.md)")
    p.add_argument("--units", type=int, default=None, help="number of units (default: preset's)")
    p.add_argument("--minutes", type=float, default=None, help="minutes per task block (default: preset's)")
    p.add_argument("--preset", choices=["default", "vbn", "generic"], default="default",
                   help="'default': ~400 units, two ~15 min blocks; 'vbn': full size, ~2,000 units, ~2.5 h; "
                        "'generic': 200 units, 24 min, a Lorenz latent, two behavioural states in "
                        "/intervals/behavior_states (run it with --states-from behavior_states:state), no stimuli; "
                        "--minutes is then the whole recording")
    p.add_argument("overrides", nargs="*", metavar="field=value",
                   help="any simulator setting (SimConfig in synthetic/simulate.py, GenericConfig in "
                        "synthetic/generic.py for --preset generic), e.g. vbn_blocks=false")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from .synthetic.simulate import parse_overrides, simulate_sessions_to_nwb, simulate_to_nwb

    overrides = parse_overrides(args.overrides, args.preset)
    if args.sessions is not None:
        if args.preset == "generic":
            raise InputError("simulate", "--sessions is not available for --preset generic")
        if overrides:
            raise InputError("simulate", "field=value settings apply to one session (not with --sessions)")
        for path in simulate_sessions_to_nwb(args.out, args.sessions, seed=args.seed, n_units=args.units,
                                             minutes=args.minutes, preset=args.preset):
            print(f"wrote {path}")
        return 0
    path = simulate_to_nwb(args.out, seed=args.seed, n_units=args.units, minutes=args.minutes, preset=args.preset,
                           **overrides)
    print(f"wrote {path}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="one-screen summary of a recording (NWB)")
    p.add_argument("file", help="an NWB file, or an https://, http:// or s3:// URL read in place (index only)")
    p.add_argument("--states-from", default=None, metavar="TABLE[:COLUMN]",
                   help="take brain states from this intervals table (and column) of a non-VBN file")
    p.add_argument("--quick", action="store_true",
                   help="read the spike-count index only: skip checking every spike time (NaN, negative, unsorted)")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    from .data.inspect import print_summary, validate_spike_times
    from .data.nwb_read import open_session
    from .data.remote import is_url

    remote = is_url(args.file)  # a URL: the index only, since checking every spike time would fetch most of the file
    with open_session(args.file, states_from=args.states_from) as session:
        warnings = [] if args.quick or remote else validate_spike_times(session)  # a broken file: one line, exit 2
        print_summary(session)
        if args.quick or remote:
            why = "--quick" if args.quick else "remote file; prepare checks them"
            print(f"spike times: not checked ({why})")
        else:
            print("spike times: " + ("; ".join(warnings) if warnings else "all finite, non-negative and sorted"))
    return 0


def _add_allen(sub) -> None:
    p = sub.add_parser("allen", help="list and download Allen Visual Behavior Neuropixels sessions (no AllenSDK)")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache", default=None, metavar="DIR",
                       help="cache directory (default: $NEUROJEPA_CACHE or ~/.cache/neurojepa/allen)")
    where.add_argument("--base-url", default=None, metavar="URL",
                       help="bucket URL (default: $NEUROJEPA_ALLEN_URL or the public VBN S3 bucket)")
    actions = p.add_subparsers(dest="allen_action", metavar="ACTION", required=True)
    s = actions.add_parser("sessions", parents=[where], help="list sessions from the project metadata, filtered")
    s.add_argument("--area", action="extend", nargs="+", default=None, metavar="A",
                   help="keep sessions that recorded all these areas (e.g. VISp LP); repeatable")
    s.add_argument("--genotype", default=None, metavar="G", help="full genotype or short name: wt, Sst, Vip")
    s.add_argument("--experience", choices=["familiar", "novel"], default=None, help="image-set experience level")
    s.add_argument("--min-units", type=int, default=None, metavar="N", help="at least N units (before QC)")
    s.add_argument("--include-abnormal", action="store_true",
                   help="keep sessions flagged for abnormal histology or activity (dropped by default)")
    s.add_argument("--limit", type=int, default=None, metavar="N", help="show at most N rows")
    d = actions.add_parser("download", parents=[where], help="download session NWB files (resumable, size-checked)")
    d.add_argument("session_ids", nargs="+", metavar="SESSION_ID", help="ecephys_session_id values")
    p.set_defaults(func=_run_allen)


def _run_allen(args) -> int:
    from .data import allen

    if args.allen_action == "download":
        for path in allen.download_sessions(args.session_ids, cache=args.cache, base_url=args.base_url):
            print(path)
        return 0
    table = allen.session_table(cache=args.cache, base_url=args.base_url)
    chosen = allen.select_sessions(table, areas=args.area, genotype=args.genotype, experience=args.experience,
                                   min_units=args.min_units, exclude_abnormal=not args.include_abnormal)
    allen.print_sessions(chosen, total=len(table), limit=args.limit)
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` positionals follow options (``prepare IN --out D bin_size=0.02``): plain argparse binds
    an empty ``nargs='*'`` positional before it sees the options and then rejects the trailing ones."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="unit QC, binning, labels and train/val/test splits of one recording")
    p.__class__ = _IntermixedParser
    p.add_argument("input", nargs="+", help="an NWB file or https/http/s3 URL (read in place); several (or "
                                            "--workers/--scheduler): OUT/<stem>/ each")
    p.add_argument("--out", required=True, help="output directory (replaced as a whole, atomically); the root "
                                                "directory with several inputs")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="prepare in N local Dask processes")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:port); paths must be visible to its workers")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="prepare options (docs/prepare.md), or a run config / preset whose prepare section is taken")
    p.add_argument("--states-from", default=None, metavar="TABLE[:COLUMN]",
                   help="take brain states from this intervals table (and column) of a non-VBN file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides, e.g. bin_size=0.02")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    from .data.prepare import prepare, print_summary
    from .pipeline import load_stage_config
    from .report.qc_figure import plot_qc

    # intermixed parsing hands every positional to `input` first: key=value ones are overrides
    inputs = [a for a in args.input if "=" not in a]
    overrides = [a for a in args.input if "=" in a] + list(args.overrides)
    if not inputs:
        raise InputError("prepare", "no input file given")
    cfg = load_stage_config("prepare", args.config, overrides)
    if len(inputs) > 1 or args.workers is not None or args.scheduler is not None:
        return _prepare_many(inputs, args, cfg)
    out = prepare(inputs[0], args.out, cfg, states_from=args.states_from, draw_qc=plot_qc)
    print_summary(out)
    return 0


def _prepare_many(inputs: list[str], args, cfg) -> int:
    from .data.parallel import prepare_many
    from .report.qc_figure import plot_qc

    results = prepare_many(inputs, args.out, cfg, workers=args.workers, scheduler=args.scheduler,
                           states_from=args.states_from, draw_qc=plot_qc)
    failed = {k: v for k, v in results.items() if isinstance(v, str)}
    for inp, out in results.items():
        if inp not in failed:
            print(f"prepared {out}")
    for inp, line in failed.items():  # one line per failed session, after the successes
        print(f"neurojepa: error: {line if line.startswith(inp) else f'{inp}: {line}'}", file=sys.stderr)
    print(f"{len(results) - len(failed)} of {len(results)} sessions prepared into {args.out}")
    return EXIT_INPUT_ERROR if failed else 0


def _add_teach(sub) -> None:
    p = sub.add_parser("teach", help="train the LeJEPA teacher on a prepared dataset and evaluate it")
    p.__class__ = _IntermixedParser
    p.add_argument("dataset", nargs="+", help="prepared dataset directories (neurojepa prepare); several: one "
                   "multi-session teacher (docs/scale.md)")
    p.add_argument("--out", required=True, help="output directory: checkpoints, logs, metrics.json, latents.npz")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="teacher options (docs/teacher.md), or a run config / preset whose teacher section is taken")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides, e.g. loss.regulariser=none")
    p.set_defaults(func=_run_teach)


def _run_teach(args) -> int:
    import json

    from .pipeline import load_stage_config
    from .teacher.train import teach

    from pathlib import Path

    # the positionals are greedy: key=value items after the directories are overrides
    dirs = [d for d in args.dataset if "=" not in d or Path(d).exists()]
    cfg = load_stage_config("teacher", args.config, [d for d in args.dataset if d not in dirs] + args.overrides)
    if len(dirs) > 1:
        from .teacher.multisession import teach_many

        out = teach_many(dirs, args.out, cfg, resume=args.resume)
        if out is None:  # a DDP rank other than 0: rank 0 evaluates and reports
            return 0
        for name, m in json.loads((out / "metrics.json").read_text())["teacher_multi"]["sessions"].items():
            print(f"{name}: " + ", ".join(f"{k}={m[k]:.3f}" for k in ("gt_r2", "cobps") if isinstance(m.get(k), float)))
        print(f"wrote {out}")
        return 0
    if not dirs:
        raise InputError("teach", "no dataset directory given")
    out = teach(dirs[0], args.out, cfg, resume=args.resume)
    m = json.loads((out / "metrics.json").read_text())["teacher"]
    keys = ("gt_r2", "gt_r2_cross_state", "rankme", "cobps", "forecast_r2")
    print(f"wrote {out}: " + ", ".join(f"{k}={m[k]:.3f}" for k in keys if isinstance(m.get(k), (int, float))))
    return 0


def _add_transfer(sub) -> None:
    p = sub.add_parser("transfer", help="fit a new session's read-in to a frozen multi-session teacher and score it")
    p.add_argument("dataset", help="the new session's prepared dataset directory")
    p.add_argument("--teacher", required=True, help="a multi-session teacher directory (neurojepa teach A B ...)")
    p.add_argument("--out", required=True, help="output directory: metrics.json, readin.pt, latents.npz")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps of the read-in fit (default 300)")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate of the read-in fit (default 1e-2)")
    p.add_argument("--baselines", action="store_true", help="also score PCA, raw counts and FA on the new session")
    p.set_defaults(func=_run_transfer)


def _run_transfer(args) -> int:
    import json

    from .teacher.transfer import transfer

    out = transfer(args.dataset, args.teacher, args.out, steps=args.steps, lr=args.lr, baselines=args.baselines)
    m = json.loads((out / "metrics.json").read_text())["transfer"]
    print(f"wrote {out}: gt_r2={m.get('gt_r2', float('nan')):.3f} (unfitted read-in "
          f"{m['null'].get('gt_r2', float('nan')):.3f}), {m['steps']} steps in {m['fit_seconds']:.1f} s")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="the main job: [simulate ->] prepare -> teach -> distill -> report (resumable)")
    p.__class__ = _IntermixedParser
    p.add_argument("input", nargs="?", default=None, help="an NWB recording (default: simulate the built-in session)")
    p.add_argument("--out", required=True, help="run directory (stages go to OUT/<stage>/)")
    p.add_argument("--config", default=None, help="YAML config or preset file (see configs/ and docs/config.md)")
    p.add_argument("--states-from", default=None, metavar="TABLE[:COLUMN]",
                   help="brain states from this intervals table (and column) of a non-VBN file")
    p.add_argument("--force", action="store_true", help="rerun in a directory that holds a run with another config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teacher.train.max_epochs=4")
    p.set_defaults(func=_run_run)


def _run_run(args) -> int:
    from .pipeline import load_run_config, run

    overrides = list(args.overrides)
    if args.input is not None and "=" in args.input:  # `neurojepa run key=value --out d`: no INPUT given
        overrides.insert(0, args.input)
        args.input = None
    if args.states_from:
        overrides.append(f"states_from={args.states_from}")
    cfg = load_run_config(args.config, overrides)
    out = run(args.out, cfg, args.input, force=args.force)
    print(f"done: {out}/report.html, {out}/metrics.json")
    return 0


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="distil a trained teacher into the spiking E/I student (Dale, homeostasis)")
    p.__class__ = _IntermixedParser
    p.add_argument("dataset", help="a prepared dataset directory (from `neurojepa prepare`)")
    p.add_argument("--teacher", required=True, help="teacher directory holding latents.npz (and metrics.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="student options (docs/student.md), or a run config / preset (e.g. student_2ms) whose "
                        "student section is taken")
    p.add_argument("--resume", action="store_true", help="continue training from OUT/last.ckpt")
    p.add_argument("--unconstrained", action="store_true",
                   help="also train the ablation without Dale and homeostasis and report its held-out CCA")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides, e.g. max_steps=200")
    p.set_defaults(func=_run_distill)


def _run_distill(args) -> int:
    from .pipeline import load_stage_config
    from .student.train import distill

    cfg = load_stage_config("student", args.config, args.overrides)
    out = distill(args.dataset, args.teacher, args.out, cfg, resume=args.resume, unconstrained=args.unconstrained)
    print(f"wrote {out}/metrics.json")
    return 0


def _add_export_nir(sub) -> None:
    p = sub.add_parser("export-nir", help="export a trained student to NIR (neuromorphic intermediate representation)")
    p.add_argument("student", help="a student directory (from `neurojepa distill`)")
    p.add_argument("--out", required=True, metavar="FILE.nir", help="output NIR file")
    p.set_defaults(func=_run_export_nir)


def _run_export_nir(args) -> int:
    from .student.nir_export import export_nir

    print(f"wrote {export_nir(args.student, args.out)}")
    return 0


def _add_export_nwb(sub) -> None:
    p = sub.add_parser("export-nwb", help="write a finished run's results (teacher latents, QC decisions, student "
                                          "spikes and read-out) to NWB")
    p.add_argument("run_dir", help="a finished run directory (from `neurojepa run`)")
    p.add_argument("--out", required=True, metavar="FILE.nwb", help="output NWB file (written atomically)")
    p.add_argument("--into-copy", action="store_true",
                   help="add the results to a copy of the run's input NWB file instead of a fresh file")
    p.set_defaults(func=_run_export_nwb)


def _run_export_nwb(args) -> int:
    from .export_nwb import export_nwb

    out = export_nwb(args.run_dir, args.out, into_copy=args.into_copy)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)build RUN_DIR/report.html from a run's saved results")
    p.add_argument("run_dir", help="a run directory (from `neurojepa run`)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report.build import build_report

    print(f"wrote {build_report(args.run_dir)}")
    return 0


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved run config (YAML), or the reference of every option")
    p.__class__ = _IntermixedParser
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="a config or preset file to resolve")
    p.add_argument("--markdown", action="store_true", help="print the option reference as Markdown (docs/config.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides to resolve")
    p.set_defaults(func=_run_config)


def _run_config(args) -> int:
    from omegaconf import OmegaConf

    from .config import markdown_reference, to_dict
    from .pipeline import RunConfig, load_run_config

    if args.markdown:
        print(markdown_reference(RunConfig, "Config reference: `neurojepa run`"), end="")
    else:
        print(OmegaConf.to_yaml(to_dict(load_run_config(args.config, args.overrides))), end="")
    return 0


COMMANDS = [_add_run, _add_config, _add_simulate, _add_inspect, _add_allen, _add_prepare, _add_teach, _add_transfer,
            _add_distill, _add_export_nir, _add_report, _add_export_nwb]  # pipeline order, as `neurojepa --help` lists them


# ------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurojepa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"neurojepa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:  # Lightning's banners (GPU available, tips) and known-harmless warnings only with -v
        logging.disable(logging.INFO)  # Lightning sets its own loggers to INFO when it is imported, later than this
        for pattern in (".*isinstance\\(treespec, LeafSpec\\).*", ".*Checkpoint directory .* exists and is not empty.*",
                        ".*smaller than the logging interval.*", ".*does not have many workers.*",
                        ".*did not converge.*"):
            warnings.filterwarnings("ignore", message=pattern)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"neurojepa: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("neurojepa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
