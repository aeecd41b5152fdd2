"""The teacher network: per-session read-in -> causal temporal encoder -> latent z_t; predictor z_t -> z_{t+1..t+K}.

Why a causal dilated convolution (TCN) rather than a GRU or a causal transformer:
- it is parallel over time, so a 30-minute session (180,000 bins) encodes in seconds on two CPU cores, where a
  GRU steps bin by bin;
- its receptive field is fixed and known (``smooth_bins + (kernel - 1) * sum(dilations)`` bins, 46 = 460 ms by
  default),
  so z_t depends on the past only, provably, and encoding a long recording in overlapping chunks gives exactly
  the same latents as encoding it whole (:meth:`TeacherNet.encode_long`);
- at 10 ms bins the latent dynamics live on 100 ms scales, which a few hundred ms of history covers.

The read-in is one linear map per session (any unit count -> ``width``), as in LFADS / NDT2 multi-session
models; it acts on sqrt(counts) (variance-stabilising for Poisson counts, the usual PCA/FA preprocessing;
``input_transform=log1p`` is the alternative).

Count anchor (:meth:`TeacherNet.readout` and :meth:`TeacherNet.expected_counts`): a Poisson read-out from z_t to
every unit's count, ``rate = g_u softplus(a_u . z_t + b_u)`` (``count_link="softplus"``, a per-unit gain g_u
outside the rectifier: a unit's rate scale and its tuning are separate parameters) or ``exp(a_u . z_t + b_u)``
(``count_link="exp"``, the log-linear GLM). It ties the latent to the population's firing rates, which JEPA
prediction alone did not (it settled on the flash schedule; see docs/teacher.md).

Two views, complementary halves of the units: a JEPA whose context and target see the same spikes can meet its
loss by encoding slowly filtered spiking noise (it is predictable 100 ms ahead, and it did exactly that in our
first runs: forecast R^2 0.9, ground-truth R^2 0). Spiking noise is independent across units, so we encode two
disjoint halves of the population and make each half's latent predict the other's future: only the shared
population dynamics can do that. ``view_mode="halves"``: fixed halves, the teacher latent is the mean of the two
half encodings. ``view_mode="masked"`` (the config default): a random half per window, the teacher latent is the
encoding of the whole population, so it uses all units (half the units cap a linear read-out of the true latents
at R^2 0.72, all held-in ones at 0.82). With the JEPA loss alone, random halves made the latent encode *which*
units were silenced; with the count anchor this did not recur (docs/teacher.md).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .config import TeacherConfig


_TRANSFORMS = {"sqrt": torch.sqrt, "log1p": torch.log1p}


class CausalConv(nn.Module):
    """Conv1d over time that sees only the present and the past: left padding of (kernel - 1) * dilation."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        return self.conv(nn.functional.pad(x, (self.pad, 0)))


class CausalSmoother(nn.Module):
    """Learnable depthwise causal filter over ``length`` bins, initialised to an exponential with time constant
    ``tau`` bins. Spikes in one 10 ms bin are mostly noise; the dilated convs sample only a few past bins each, so
    without this first integration stage even the *untrained* encoder loses most of the signal (ridge R^2 to the
    true latents 0.13-0.23 vs 0.57 for a random projection of smoothed counts)."""

    def __init__(self, channels: int, length: int = 16, tau: float = 5.0):
        super().__init__()
        self.length = length
        kernel = torch.exp(-torch.arange(length, dtype=torch.float32).flip(0) / tau)
        self.conv = nn.Conv1d(channels, channels, length, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_((kernel / kernel.sum()).expand(channels, 1, length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        return self.conv(nn.functional.pad(x, (self.length - 1, 0)))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = CausalConv(channels, kernel, dilation)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        # LayerNorm over channels at each time step: causal (GroupNorm would pool over time, leaking the future)
        h = nn.functional.layer_norm(x.transpose(1, 2), (x.shape[1],)).transpose(1, 2)
        return x + self.mix(nn.functional.gelu(self.conv(h)))


class TeacherNet(nn.Module):
    """Encoder + predictor.

    sessions: {session key: number of input units}. encode(counts (B, T, U), session) -> z (B, T, D);
    predict(z (B, T, D)) -> (B, T, K + 1, D), the other view's z_t and the forecast of z_{t+1..t+K} made at t.
    """

    def __init__(self, sessions: dict[str, int], *, width: int, embed_dim: int, kernel: int, dilations: Sequence[int],
                 horizon: int, predictor_hidden: int, seed: int, smooth_bins: int, input_transform: str,
                 linear_skip: bool, view_mode: str, count_link: str):
        """Every option is required: :meth:`from_config` is the one place that maps a
        :class:`~neurojepa.teacher.config.TeacherConfig` to them (their defaults live there)."""
        super().__init__()
        if input_transform not in _TRANSFORMS:
            raise ValueError(f"input_transform must be one of {sorted(_TRANSFORMS)}, not {input_transform!r}")
        self.transform = _TRANSFORMS[input_transform]
        if view_mode not in ("halves", "masked"):
            raise ValueError(f"view_mode must be halves or masked, not {view_mode!r}")
        self.view_mode = view_mode
        # a fixed random half of each session's units: view A = those units, view B = the others (see embed)
        g = torch.Generator().manual_seed(seed)
        for k, n in sessions.items():
            self.register_buffer(f"half_{k}", (torch.randperm(n, generator=g) < n // 2).float())
        self.readin = nn.ModuleDict({k: nn.Linear(n, width) for k, n in sessions.items()})
        # count anchor: each unit's linear predictor a_u . z_t + b_u, through the link below (module docstring)
        self.count_readout = nn.ModuleDict({k: nn.Linear(embed_dim, n) for k, n in sessions.items()})
        if count_link not in ("exp", "softplus"):
            raise ValueError(f"count_link must be exp or softplus, not {count_link!r}")
        self.count_link = count_link
        # softplus link: each unit's log gain g_u (the rate scale outside the rectifier)
        self.count_gain = nn.ParameterDict({k: nn.Parameter(torch.zeros(n)) for k, n in sessions.items()}) \
            if count_link == "softplus" else None
        self.smoother = CausalSmoother(width, smooth_bins)
        self.blocks = nn.ModuleList([ResidualBlock(width, kernel, d) for d in dilations])
        self.head = nn.Linear(width, embed_dim)
        # linear path from the smoothed read-in straight to z (see encode)
        self.skip = nn.Linear(width, embed_dim, bias=False) if linear_skip else None
        self.horizon, self.embed_dim = horizon, embed_dim
        self.receptive_field = smooth_bins + (kernel - 1) * sum(dilations)
        # predictor_hidden 0: a linear predictor (the default: it favours a latent whose dynamics are linear,
        # as the simulator's filtered-impulse latents are, and gave the best gt_r2, docs/teacher.md); > 0: an MLP
        out = (horizon + 1) * embed_dim
        self.predictor = nn.Linear(embed_dim, out) if predictor_hidden == 0 else nn.Sequential(
            nn.Linear(embed_dim, predictor_hidden), nn.GELU(), nn.Linear(predictor_hidden, predictor_hidden),
            nn.GELU(), nn.Linear(predictor_hidden, out))

    @classmethod
    def from_config(cls, cfg: TeacherConfig, units: int | Mapping[str, int]) -> "TeacherNet":
        """The network a :class:`~neurojepa.teacher.config.TeacherConfig` describes: ``model.*`` for the encoder
        and predictor, ``loss.count_link`` for the count anchor, ``train.seed`` for the fixed view halves.

        units: {session key: number of input units}, or one count for a single session keyed ``"session"``."""
        m = cfg.model
        sessions = dict(units) if isinstance(units, Mapping) else {"session": int(units)}
        return cls(sessions, width=m.width, embed_dim=m.embed_dim, kernel=m.kernel, dilations=tuple(m.dilations),
                   horizon=m.horizon, predictor_hidden=m.predictor_hidden, seed=cfg.train.seed,
                   smooth_bins=m.smooth_bins, input_transform=m.input_transform, linear_skip=m.linear_skip,
                   view_mode=m.views, count_link=cfg.loss.count_link)

    def encode(self, counts: torch.Tensor, session: str = "session", scale: torch.Tensor | None = None) -> torch.Tensor:
        """counts: (B, T, U) spikes per bin (float) -> z: (B, T, D), z[:, t] a function of counts[:, :t+1].

        scale: optional per-unit factors applied after the input transform, broadcastable to (B, T, U) (the
        views' masks and augmentations: 0 hides a unit)."""
        u = self.transform(counts)
        if scale is not None:
            u = u * scale
        h0 = self.smoother(self.readin[session](u).transpose(1, 2))  # (B, width, T)
        h = h0
        for block in self.blocks:
            h = block(h)
        h = nn.functional.layer_norm(h.transpose(1, 2), (h.shape[1],))
        if self.skip is None:
            return self.head(h)
        # the per-time-step LayerNorms discard the population's overall level and scale, which carry latent
        # signal; the linear path (a learnt, causally smoothed projection of the counts, like PCA/FA) keeps it
        return self.head(h) + self.skip(h0.transpose(1, 2))

    def view_masks(self, batch: int, session: str = "session", generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views' unit masks, each (batch, 1, U) of 0/1, complementary: ``halves``: the fixed random
        halves; ``masked``: a fresh random half per window (drawn from ``generator``)."""
        half = getattr(self, f"half_{session}")
        if self.view_mode == "halves":
            a = half.expand(batch, 1, -1)
        else:
            a = (torch.rand(batch, 1, half.shape[0], generator=generator) < 0.5).to(half)
        return a, 1 - a

    def embed(self, counts: torch.Tensor, session: str = "session") -> torch.Tensor:
        """The teacher latent, (B, T, U) -> (B, T, D). ``halves``: the mean of the two half-population encodings
        (training makes each predict the other, so they agree on the shared signal and averaging halves what
        is left of each half's own noise). ``masked``: the encoding of the whole population (views are random
        halves scaled by 2, so the full input has the same expected drive)."""
        if self.view_mode == "masked":
            return self.encode(counts, session)
        a, b = self.view_masks(counts.shape[0], session)
        return 0.5 * (self.encode(counts, session, 2 * a) + self.encode(counts, session, 2 * b))

    def readout(self, z: torch.Tensor, session: str = "session") -> torch.Tensor:
        """z: (B, T, D) -> (B, T, U) the count read-out's linear predictor a_u . z + b_u of every unit."""
        return self.count_readout[session](z)

    def init_count_readout(self, readouts, mean_counts: torch.Tensor, session: str = "session") -> None:
        """Start the given count read-outs (nn.Linear) of ``session`` at every unit's mean count per bin (U,):
        exp link: bias = log mean; softplus link: gain = mean, bias = softplus^-1(1), so the rectifier starts in
        its linear range with the gain carrying the unit's rate."""
        log_mean = torch.log(mean_counts + 1e-3)
        bias = log_mean if self.count_gain is None else torch.full_like(log_mean, math.log(math.e - 1.0))
        with torch.no_grad():
            for ro in readouts:
                ro.bias.copy_(bias)
            if self.count_gain is not None:
                self.count_gain[session].copy_(log_mean)

    def expected_counts(self, eta: torch.Tensor, session: str = "session") -> torch.Tensor:
        """The read-out's linear predictor eta (B, T, U) -> expected counts per bin (the link, ``count_link``)."""
        if self.count_gain is None:
            return torch.exp(eta)
        return nn.functional.softplus(eta) * torch.exp(self.count_gain[session]) + 1e-8

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, T, D) -> (B, T, K + 1, D): [:, :, 0] the other view's latent now, [:, :, k] the forecast of the
        latent k bins ahead."""
        return self.predictor(z).unflatten(-1, (self.horizon + 1, self.embed_dim))

    @torch.no_grad()
    def encode_long(self, counts, session: str = "session", chunk: int = 8192) -> torch.Tensor:
        """Causal teacher latents (:meth:`embed`, n_bins, D) of a whole recording counts: (n_bins, U), in chunks with a warm-up overlap
        of receptive_field - 1 bins, so the result equals encoding it in one piece."""
        n = counts.shape[0]
        warm = self.receptive_field - 1
        out = []
        for start in range(0, n, chunk):
            lo = max(0, start - warm)
            x = torch.as_tensor(counts[lo:start + chunk], dtype=torch.float32)[None]
            out.append(self.embed(x, session)[0, start - lo:])
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)
