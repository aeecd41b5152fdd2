"""neurojepa: latent dynamics of neural populations with a LeJEPA teacher, distilled into a spiking student.

The pipeline reads left to right: ``data`` (sessions, NWB, Allen access, simulator, QC, binning) ->
``teacher`` (LeJEPA) -> ``student`` (E/I LIF network) -> ``metrics`` -> ``report``.
"""

__version__ = "0.1.0"
