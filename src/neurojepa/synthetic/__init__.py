"""Synthetic data with known ground truth: the one home of every generator in neurojepa.

Real recordings cannot tell whether a model recovered the hidden dynamics; synthetic ones can, because their latents
are known. Three modules, from full-size to small:

- :mod:`neurojepa.synthetic.simulate`: the VBN-like simulator, the default data of ``neurojepa run`` and
  ``neurojepa simulate``. A change-detection task, latents driven by stimuli and behaviour, a state-dependent
  population code, spikes with the imperfections that make units fail QC, one session or a set sharing the latent
  generator, in memory or written as VBN-layout NWB (``docs/simulator.md``). Everything downstream reads its output
  exactly like a real recording.
- :mod:`neurojepa.synthetic.generic`: ``preset="generic"``, a generic two-state recording (a Lorenz latent, two
  behavioural states in ``/intervals/behavior_states``, a state-dependent code, no stimuli, no replay) for
  cross-state work on a file like a user's own (``docs/simulator.md``).
- :mod:`neurojepa.synthetic.toy`: two small generators for tests, benchmarks and development that skip NWB and
  ``prepare``: :class:`~neurojepa.synthetic.toy.ToySession` (a prepared-session stand-in with states, labels and
  ground-truth latents, for the teacher) and :func:`~neurojepa.synthetic.toy.synthetic_session` (counts plus a
  latent that plays the teacher, for the student).

Layering: this package builds on :mod:`neurojepa.data` (the :class:`~neurojepa.data.session.Session` model, the NWB
writer, :class:`~neurojepa.data.arrays.ArraySession`) and the top-level helpers, and on nothing above them. The
teacher, student and report never import it; the pipeline, the CLI, tests and benchmarks do.
"""
