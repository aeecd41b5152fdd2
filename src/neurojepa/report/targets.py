"""Every headline number beside its target, with pass / fail / not available.

Targets come from the phase issues (4: teacher, 5: student) and live in one table, :data:`TARGETS`, so the report,
the docs and a test read the same list. Each target reads its value from the merged metrics dict
(``{"data": ..., "teacher": ..., "student": ...}``) through a small function; a value that is missing, None or
NaN gives status ``"not available"``, never a pass.

Decisions:

- "student decoding >= 90% of the teacher's" is judged on the *smallest* per-task ratio of balanced accuracies
  (student / teacher, within-state tasks both have): every task must keep 90%. The student's own
  ``decoding_ratio_min`` is used when present, otherwise the ratio is computed from the two ``decoding`` sections.
- "constrained CCA >= 80% of unconstrained" uses ``cca_ratio_constrained_to_unconstrained`` or, failing that,
  ``cca_heldout_mean / cca_heldout_mean_unconstrained``.
- "teacher at or above PCA" compares with ``teacher.baselines.pca`` on the same metric (same splits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

PASS, FAIL, NA = "pass", "fail", "not available"


def dig(d: Any, *keys: str) -> Any:
    """d[k1][k2]... or None where any level is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def number(x: Any) -> float | None:
    """A finite float, or None (missing, None, NaN, inf or not a number)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def decoding_ratios(student_dec: dict | None, teacher_dec: dict | None) -> dict[str, float]:
    """{"state/task": student balanced accuracy / teacher's} for every within-state task both have."""
    out = {}
    for state, tasks in ((student_dec or {}).get("within") or {}).items():
        for task, res in (tasks or {}).items():
            s = number((res or {}).get("balanced_accuracy"))
            t = number(dig(teacher_dec, "within", state, task, "balanced_accuracy"))
            if s is not None and t:
                out[f"{state}/{task}"] = s / t
    return out


def _decoding_ratio_min(m: dict) -> float | None:
    v = number(dig(m, "student", "decoding_ratio_min"))
    if v is not None:
        return v
    r = decoding_ratios(dig(m, "student", "decoding"), dig(m, "teacher", "decoding"))
    return min(r.values()) if r else None


def _cca_ratio(m: dict) -> float | None:
    v = number(dig(m, "student", "cca_ratio_constrained_to_unconstrained"))
    if v is not None:
        return v
    c = number(dig(m, "student", "cca_heldout_mean"))
    u = number(dig(m, "student", "cca_heldout_mean_unconstrained")) or number(
        dig(m, "student", "unconstrained", "cca_heldout_mean"))
    return c / u if c is not None and u else None


def rate_band(student: dict | None) -> tuple[float, float] | None:
    """The homeostatic band (low, high) in Hz the student's run used (its ``rate_band_hz`` metric, written from
    ``rate_low_hz`` / ``rate_high_hz``); None when the metrics do not record it."""
    band = (student or {}).get("rate_band_hz")
    if not isinstance(band, (list, tuple)) or len(band) != 2:
        return None
    lo, hi = number(band[0]), number(band[1])
    return None if lo is None or hi is None else (lo, hi)


def _in_band_text(m: dict) -> str:
    band = rate_band(dig(m, "student"))
    return f"of neurons at {band[0]:g}-{band[1]:g} Hz" if band else "of neurons in the rate band"


def _half_dim(m: dict) -> float | None:
    d = number(dig(m, "teacher", "embed_dim"))
    return None if d is None else 0.5 * d


@dataclass(frozen=True)
class Target:
    """One headline number and its rule. value(m) -> float|None; bound(m) -> the reference (a constant or another
    metric, e.g. the PCA baseline); op: ">=", ">", "<", "==", "in" (bound is then (low, high)); description: text, or
    a function of the metrics for text that depends on the run (the student's rate band)."""

    phase: str
    name: str
    description: str | Callable[[dict], str]
    value: Callable[[dict], float | None]
    op: str
    bound: Callable[[dict], Any]

    def check(self, m: dict) -> tuple[float | None, Any, str]:
        """(value, bound, status) on the merged metrics m."""
        v, b = self.value(m), self.bound(m)
        if v is None or b is None or (isinstance(b, tuple) and any(x is None for x in b)):
            return v, b, NA
        ok = {">=": lambda: v >= b, ">": lambda: v > b, "<": lambda: v < b, "==": lambda: v == b,
              "in": lambda: b[0] <= v <= b[1]}[self.op]()
        return v, b, PASS if ok else FAIL

    def rule(self, bound: Any, m: dict | None = None) -> str:
        """The target as text, e.g. ">= 0.9" or "in [0.5, 1.5]"; m: the metrics a description may depend on."""
        text = self.description(m or {}) if callable(self.description) else self.description
        if bound is None or (isinstance(bound, tuple) and any(x is None for x in bound)):
            return f"{self.op} {text}"
        if self.op == "in":
            return f"in [{bound[0]:g}, {bound[1]:g}]"
        return f"{self.op} {bound:.3g}" + (f" ({text})" if text else "")


def _get(*keys: str) -> Callable[[dict], float | None]:
    return lambda m: number(dig(m, *keys))


def _const(x: Any) -> Callable[[dict], Any]:
    return lambda m: x


def _best_baseline(key: str) -> Callable[[dict], float | None]:
    """The higher of the smoothing and PCA baselines' ``key`` (None when neither has it)."""
    def best(m: dict) -> float | None:
        vals = [v for v in (number(dig(m, "teacher", "baselines", b, key)) for b in ("smoothing", "pca")) if v is not None]
        return max(vals) if vals else None
    return best


TARGETS: list[Target] = [
    Target("teacher", "gt_r2", "", _get("teacher", "gt_r2"), ">=", _const(0.9)),
    Target("teacher", "rankme", "0.5 x embed_dim", _get("teacher", "rankme"), ">=", _half_dim),
    Target("teacher", "gt_r2 vs PCA", "PCA baseline", _get("teacher", "gt_r2"), ">=",
           _get("teacher", "baselines", "pca", "gt_r2")),
    Target("teacher", "cobps vs PCA", "PCA baseline", _get("teacher", "cobps"), ">=",
           _get("teacher", "baselines", "pca", "cobps")),
    Target("teacher", "cobps vs smoothing", "NLB's smoothing baseline: smoothed held-in counts -> GLM",
           _get("teacher", "cobps"), ">=", _get("teacher", "baselines", "smoothing", "cobps")),
    Target("teacher", "forecast_r2 vs the mean-rate forecast", "0: no better than each unit's mean rate",
           _get("teacher", "forecast_r2"), ">", _const(0.0)),
    Target("teacher", "cobps (per-state GLM) vs PCA", "PCA baseline, same per-state GLM",
           _get("teacher", "cobps_per_state"), ">=", _get("teacher", "baselines", "pca", "cobps_per_state")),
    Target("teacher", "gt_r2_cross_state vs baselines", "best of smoothing and PCA (an aim of the issue)",
           _get("teacher", "gt_r2_cross_state"), ">=", _best_baseline("gt_r2_cross_state")),
    Target("teacher", "cobps_cross_state vs PCA", "PCA baseline, GLM fit in one state, scored in the other",
           _get("teacher", "cobps_cross_state"), ">=", _get("teacher", "baselines", "pca", "cobps_cross_state")),
    Target("student", "cca_heldout_mean", "", _get("student", "cca_heldout_mean"), ">=", _const(0.7)),
    Target("student", "cca_null_mean", "", _get("student", "cca_null_mean"), "<", _const(0.2)),
    Target("student", "cca_cross_state vs its null", "CCA fit in one state, scored in the other; null: shifted latents",
           _get("student", "cca_cross_state"), ">=", _get("student", "cca_cross_state_null")),
    Target("student", "frac_in_band", _in_band_text, _get("student", "frac_in_band"), ">=", _const(0.9)),
    Target("student", "dale_violations", "", _get("student", "dale_violations"), "==", _const(0.0)),
    Target("student", "cv_isi_median", "", _get("student", "cv_isi_median"), "in", _const((0.5, 1.5))),
    Target("student", "decoding ratio (min over tasks)", "student / teacher balanced accuracy",
           _decoding_ratio_min, ">=", _const(0.9)),
    Target("student", "CCA constrained / unconstrained", "", _cca_ratio, ">=", _const(0.8)),
]


def evaluate_targets(metrics: dict) -> list[dict]:
    """One row per target: dict(phase, name, value, target (text), status in {pass, fail, not available})."""
    rows = []
    for t in TARGETS:
        v, b, status = t.check(metrics)
        rows.append(dict(phase=t.phase, name=t.name, value=v, target=t.rule(b, metrics), status=status))
    return rows
