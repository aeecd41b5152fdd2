"""neurojepa: latent dynamics of neural populations with a LeJEPA teacher, distilled into a spiking student.

The pipeline reads left to right: ``data`` (sessions, NWB, Allen access, QC, binning) ->
``teacher`` (LeJEPA) -> ``student`` (E/I LIF network) -> ``metrics`` -> ``report``; ``synthetic`` (the VBN-like
simulator and small toys) produces data with ground truth for all of them.

The public API is small: :func:`run` (the main job), :func:`load_run` (open a finished run),
:func:`open_session` (any NWB recording as a :class:`~neurojepa.data.session.Session`, a local path or a URL),
:func:`simulate_session` (a VBN-like session with ground truth), and the estimators :class:`Teacher` and
:class:`Student` (fit / transform / score / save / load on count arrays). Heavy modules load on first use.
"""

from .version import __version__

__all__ = ["run", "load_run", "open_session", "simulate_session", "Teacher", "Student", "__version__"]


def __getattr__(name):  # lazy: `import neurojepa` stays instant, torch loads only when needed
    if name in ("run", "load_run"):
        from . import api

        return getattr(api, name)
    if name == "open_session":
        from .data.nwb_read import open_session

        return open_session
    if name in ("Teacher", "Student"):
        from . import estimators

        return getattr(estimators, name)
    if name == "simulate_session":
        from .synthetic.simulate import simulate_session

        return simulate_session
    raise AttributeError(f"module 'neurojepa' has no attribute {name!r}")
