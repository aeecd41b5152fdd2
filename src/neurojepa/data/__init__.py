"""Phase 0: recordings as :class:`~neurojepa.data.session.Session` objects, NWB reading and writing, Allen VBN
access, the ground-truth simulator, unit QC, binning and training datasets. Imports no model code."""
