"""The teacher's latent centred within each behavioural state (``loss.state_centring``; issue 15, docs/teacher.md).

SIGReg within each state (``loss.reg_per_state``) pushes every state's latents toward the same N(0, I) while the
teacher trains, but beside the count anchor it is a weak, sampled pressure: on the generic two-state preset a linear
classifier still reads the state from the trained latent on 99.8 % of held-out bins (from the true latent: 53 %,
chance 52 %), through per-state means up to 0.8 SD apart. A read-out fit in one state then meets inputs shifted by
that offset in the other. After training, the mean latent of each state's train blocks is subtracted from every bin
of that state, which makes the first moment of "every state looks the same" exact instead of approximate.

``auto`` does this wherever the regulariser acts within each state (two or more states, no replay pairs, one
process); on VBN-like data the replay pairs tie the states and a free latent dim carries the state on purpose, so
nothing changes there. The centres, (n_states, D) in the module's state-code order, live on the module
(``module.state_centres``, None when off) and in ``latents.npz``; :func:`~neurojepa.teacher.train.encode_states`
subtracts them, so ``neurojepa teach`` and ``nj.Teacher.transform`` give the same latents. A teacher loaded from a
checkpoint alone (``transfer``, multi-session) has no centres and encodes uncentred.
"""

from __future__ import annotations

import numpy as np

from .config import TeacherConfig


def centring_on(cfg: TeacherConfig, reg_per_state: bool, n_states: int) -> bool:
    """Whether the latent is centred within each state: ``auto`` follows the per-state regulariser, ``always``
    needs two or more states."""
    mode = cfg.loss.state_centring
    if mode == "auto":
        return bool(reg_per_state)
    return mode == "always" and n_states > 1


def state_centres(z: np.ndarray, state: np.ndarray, split: np.ndarray, names: list[str]) -> np.ndarray:
    """(len(names), D) float32: the mean of z over each state's train-block rows (zeros for a state without any).
    z: (n, D); state, split: (n,) str."""
    state, split = np.asarray(state).astype(str), np.asarray(split).astype(str)
    out = np.zeros((len(names), z.shape[1]), np.float32)
    for code, name in enumerate(names):
        rows = np.flatnonzero((state == name) & (split == "train"))
        if len(rows):
            out[code] = np.asarray(z[rows], np.float64).mean(0)
    return out


def centre(z: np.ndarray, state: np.ndarray, names: list[str], centres: np.ndarray) -> np.ndarray:
    """z with each row's state centre subtracted, in place (float32 z); returns z. state: (n,) str, names: the
    state-code order of ``centres``."""
    state = np.asarray(state).astype(str)
    for code, name in enumerate(names):
        rows = state == name
        if rows.any():
            z[rows] -= centres[code]
    return z
