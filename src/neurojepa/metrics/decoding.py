"""Linear decoding of task variables from features (pure functions of arrays).

:func:`decode` fits a standardised, L2-regularised logistic regression on the train rows (strength chosen by
stratified cross-validation inside the train rows) and scores it on the test rows: balanced accuracy with its
chance level ``chance`` = 1 / n_classes (what a guess, or a constant answer, scores), and plain accuracy with its
own chance level ``chance_accuracy`` (the test rows' majority-class frequency). Train and test rows are the caller's choice: held-out time blocks of
one state (within-state), or one state's train blocks vs the other's test blocks (cross-state).

:func:`flash_features` turns per-bin latents into one feature vector per stimulus flash (mean latent over a
window after onset), the unit that image identity and change detection are defined on.

:func:`decoding_report` is the protocol teacher, student and baselines share: image identity, is_change, lick and
hit-vs-miss from flash features, within each state (train blocks -> test blocks) and across states.

:func:`behaviour_decoding` does the same for continuous behaviour (running speed, pupil and any other
float behaviour column of the labels, :func:`behaviour_targets`): a ridge read-out (``latent.ridge_r2``) from the
per-bin latents, fit on one state's train blocks, R^2 on that state's test blocks (within) and the other's (cross).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .latent import ridge_r2
from .rows import BLOCK_BYTES, block_rows, take_rows


def decode(features: np.ndarray, labels: np.ndarray, train_mask: np.ndarray, test_mask: np.ndarray,
           seed: int = 0) -> dict:
    """Logistic-regression decoding of ``labels`` from ``features``.

    features: (n, D); labels: (n,) any hashable (str/int/bool); train_mask, test_mask: (n,) bool.
    Returns dict(balanced_accuracy, chance, accuracy, chance_accuracy, n_train, n_test, n_classes): ``chance`` is
    the chance level of the balanced accuracy (1 / n_classes, n_classes counted in the train rows) and
    ``chance_accuracy`` that of the plain accuracy (majority-class frequency of the test rows). The scores are
    NaN when the train rows hold fewer than two classes or either side is empty.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    tr, te = np.asarray(train_mask, bool), np.asarray(test_mask, bool)
    classes, counts = np.unique(y[tr], return_counts=True)
    out = dict(n_train=int(tr.sum()), n_test=int(te.sum()), n_classes=int(len(classes)),
               accuracy=float("nan"), balanced_accuracy=float("nan"), chance=float("nan"),
               chance_accuracy=float("nan"))
    if len(classes) < 2 or te.sum() == 0:
        return out
    folds = int(min(3, counts.min()))  # 3 folds x 3 strengths: decoding dozens of feature sets stays ~seconds
    if folds < 2:
        return out
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.01, 0.1, 1.0], cv=folds, max_iter=300, tol=1e-3,
                                                               class_weight="balanced", random_state=seed))
    with warnings.catch_warnings():  # sklearn's API-transition FutureWarnings and class-coverage notes
        warnings.simplefilter("ignore")
        clf.fit(x[tr], y[tr])
        pred = clf.predict(x[te])
        bal = float(balanced_accuracy_score(y[te], pred))
    _, test_counts = np.unique(y[te], return_counts=True)
    out.update(accuracy=float((pred == y[te]).mean()),
               balanced_accuracy=bal,
               chance=1.0 / len(classes),
               chance_accuracy=float(test_counts.max() / test_counts.sum()))
    return out


def flash_onsets(time_since_flash: np.ndarray, bin_size: float) -> np.ndarray:
    """Bin indices where a flash starts: time_since_flash (n_bins,) in s, NaN outside flashes, resets at onset."""
    tsf = np.asarray(time_since_flash, dtype=np.float64)
    prev = np.concatenate([[np.nan], tsf[:-1]])
    start = (tsf < bin_size) & ~(prev < bin_size)  # first bin of each flash; NaN compares False
    return np.flatnonzero(start)


def flash_features(latents, onsets: np.ndarray, width: int) -> np.ndarray:
    """(n_flashes, D) mean of latents (n_bins, D) over bins [onset, onset + width) of each flash.

    latents: an array or a row source (rows.py); only the flashes' windows are read, a block of flashes at a time
    (a cumsum would read every bin of the session)."""
    onsets = np.asarray(onsets, dtype=np.int64)
    n_bins, d = latents.shape
    out = np.zeros((len(onsets), d))
    step = max(1, block_rows(d) // max(1, width))
    for i in range(0, len(onsets), step):
        rows = onsets[i:i + step, None] + np.arange(width)  # (flashes, width)
        inside = rows < n_bins
        vals = np.zeros(rows.shape + (d,))
        vals[inside] = take_rows(latents, rows[inside])
        out[i:i + step] = vals.sum(1) / inside.sum(1)[:, None]
    return out


def _decoding_tasks(labels, onsets: np.ndarray, bin_size: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (flash rows into onsets, labels)}: image identity and is_change on shown flashes; lick (any lick
    within 750 ms) and hit-vs-miss on change flashes, in the active state only."""
    img = labels["image"].to_numpy()[onsets].astype(str)
    shown = (img != "") & ~labels["omitted"].to_numpy()[onsets].astype(bool)
    state = labels["state"].to_numpy()[onsets].astype(str)
    tasks = {"image": (np.flatnonzero(shown), img[shown]),
             "is_change": (np.flatnonzero(shown), labels["is_change"].to_numpy()[onsets][shown].astype(bool))}
    active = shown & (state == "active")
    lick_bins = np.concatenate([[0], np.cumsum(labels["licks"].fillna(0).to_numpy() > 0)])
    stop = np.minimum(onsets + int(round(0.75 / bin_size)), len(labels))
    licked = (lick_bins[stop] - lick_bins[onsets]) > 0
    tasks["lick"] = (np.flatnonzero(active), licked[active])
    outcome = labels["trial_outcome"].to_numpy()[onsets].astype(str)
    hm = active & np.isin(outcome, ["hit", "miss"])
    tasks["hit"] = (np.flatnonzero(hm), outcome[hm] == "hit")
    return tasks


def compare_states(state: np.ndarray) -> list[str]:
    """The states to compare: active and passive when both exist (the research question), else all."""
    present = sorted(s for s in np.unique(state) if s)
    return ["active", "passive"] if {"active", "passive"} <= set(present) else present


def decoding_report(z: np.ndarray, labels, split: np.ndarray, bin_size: float, window_ms: float,
                    seed: int = 0, train_states: list[str] | None = None, test_states: list[str] | None = None
                    ) -> dict:
    """Within-state (train blocks -> test blocks) and cross-state (one state's train -> other's test) decoding.

    With ``train_states``: "within" only for those states, "cross" only from them to ``test_states`` (default:
    every state compared). window_ms: each flash's features are the mean of z over this window after its onset
    (the caller's setting; the teacher's ``eval.flash_window_ms``).

    z: (n_bins, D). Returns {"within": {state: {task: decode()}}, "cross": {"A->B": {task: decode()}},
    "flash_window_ms": window_ms} (the window travels with the results, so a second model can be decoded on the same
    one); only the metrics (balanced_accuracy, chance, accuracy, chance_accuracy, n_train, n_test, n_classes) are
    kept. Empty ({}) when labels carry no flashes.
    """
    if "time_since_flash" not in labels or labels["time_since_flash"].isna().all():
        return {}
    onsets = flash_onsets(labels["time_since_flash"].to_numpy(), bin_size)
    feats = flash_features(z, onsets, max(1, int(round(window_ms / 1000 / bin_size))))
    fstate = labels["state"].to_numpy()[onsets].astype(str)
    fsplit = np.asarray(split)[onsets]
    states = compare_states(fstate)
    sources = list(train_states) if train_states else states
    targets = list(test_states) if test_states else states
    out: dict = {"within": {}, "cross": {}, "flash_window_ms": float(window_ms)}
    for task, (rows, y) in _decoding_tasks(labels, onsets, bin_size).items():
        st, sp, x = fstate[rows], fsplit[rows], feats[rows]
        for a in sources:
            res = decode(x, y, (st == a) & (sp == "train"), (st == a) & (sp == "test"), seed=seed)
            if res["n_classes"] >= 2:
                out["within"].setdefault(a, {})[task] = res
            for b in targets:
                if a != b and task in ("image", "is_change"):
                    res = decode(x, y, (st == a) & (sp == "train"), (st == b) & (sp == "test"), seed=seed)
                    out["cross"].setdefault(f"{a}->{b}", {})[task] = res
    return out


# label columns that are not continuous behaviour (data/labels.py); "running" is renamed below
_NOT_BEHAVIOUR = {"time", "state", "block", "image", "is_change", "omitted", "time_since_flash", "trial_outcome",
                  "running", "licks"}


def behaviour_targets(labels, bin_size: float) -> dict[str, np.ndarray]:
    """{name: (n_bins,) float64} continuous behaviour of the labels (NaN where unknown): ``running_speed`` (cm/s,
    the ``running`` column) and every other numeric column that is not a task label (e.g. ``pupil_area``, position
    or head-direction streams). Licks are events, not a continuous behaviour: a ridge R^2 of a lick rate across
    states mostly measures that one state does not lick (the flash decoding's ``lick`` task covers them).
    Columns without two distinct finite values are left out. ``bin_size`` (s) is kept for rate-like targets."""
    out: dict[str, np.ndarray] = {}
    if "running" in labels:
        out["running_speed"] = labels["running"].to_numpy(dtype=np.float64, na_value=np.nan)
    for col in labels.columns:
        if col in _NOT_BEHAVIOUR or col in out:
            continue
        kind = getattr(labels[col].dtype, "kind", "O")
        if kind in "fiu":
            out[str(col)] = labels[col].to_numpy(dtype=np.float64, na_value=np.nan)
    return {k: v for k, v in out.items() if len(np.unique(v[np.isfinite(v)])) > 1}


class _RowCache:
    """A row source (rows.py) that keeps the blocks of rows it was asked for, up to ``max_bytes``: the ridge fits
    of one source state read the same train blocks in several passes, and a computed row source (the ``raw``
    baseline's smoothed counts) would otherwise filter them again on every pass. Same values as ``x``."""

    def __init__(self, x, max_bytes: int):
        self.x, self.shape, self.max_bytes, self.used, self.blocks = x, x.shape, max_bytes, 0, {}

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        key = (len(rows), rows.tobytes())
        hit = self.blocks.get(key)
        if hit is None:
            hit = np.asarray(take_rows(self.x, rows))
            if self.used + hit.nbytes <= self.max_bytes:
                self.blocks[key], self.used = hit, self.used + hit.nbytes
        return hit


def behaviour_decoding(z, labels, split: np.ndarray, bin_size: float, train_states: list[str] | None = None,
                       test_states: list[str] | None = None, rows: np.ndarray | None = None) -> dict:
    """Ridge decoding of continuous behaviour (:func:`behaviour_targets`) from latents z (n_bins, D), an array
    or a row source (rows.py), within and across states.

    For each behaviour and each source state A (``train_states``, default :func:`compare_states`): a ridge map
    (``latent.ridge_r2``: standardised features, strength by leave-one-out) fit on A's train blocks, scored R^2 on
    A's test blocks ("within") and on every other target state B's test blocks ("cross", ``"A->B"``; targets:
    ``test_states``, default the compared states). Bins where the behaviour is not finite are left out; ``rows``
    (n_bins,) bool limits every fit and score further (e.g. the student's bins after its burn-in).
    Returns {name: {"within": {A: r2}, "cross": {"A->B": r2}, "within_mean", "cross_mean"}} (a mean is None
    without entries); {} when the labels have no behaviour or no state."""
    if labels is None or "state" not in labels:
        return {}
    state = labels["state"].to_numpy().astype(str)
    split = np.asarray(split).astype(str)
    ok = np.ones(len(split), bool) if rows is None else np.asarray(rows, bool)
    states = compare_states(state)
    sources = list(train_states) if train_states else states
    targets = list(test_states) if test_states else states
    out: dict = {}
    x = z if isinstance(z, np.ndarray) else _RowCache(z, 4 * BLOCK_BYTES)  # bounded: 4 blocks' bytes
    for name, y in behaviour_targets(labels, bin_size).items():
        good = ok & np.isfinite(y)
        res: dict = {"within": {}, "cross": {}}
        for a in sources:
            tr = good & (state == a) & (split == "train")
            if tr.sum() <= z.shape[1] or len(np.unique(y[tr])) < 2:
                continue
            for b in [a] + [t for t in targets if t != a]:
                te = good & (state == b) & (split == "test")
                if te.sum() < 2:
                    continue
                r2 = ridge_r2(x, y, tr, te)
                if b == a:
                    res["within"][a] = r2
                else:
                    res["cross"][f"{a}->{b}"] = r2
        if res["within"] or res["cross"]:
            res["within_mean"] = float(np.mean(list(res["within"].values()))) if res["within"] else None
            res["cross_mean"] = float(np.mean(list(res["cross"].values()))) if res["cross"] else None
            out[name] = res
    return out
