"""The LeJEPA training step as a LightningModule (read top to bottom: augment, encode, predict, regularise).

Each batch holds windows of ``warm + window + K`` bins, where warm = receptive_field - 1: the first warm bins
only give the causal encoder its history (so training sees the same context as encoding a whole recording), the
next ``window`` bins carry the loss, and the last K bins supply the forecast targets.

    loss = (1 - lam) * mean |predict(z_t) - z'_{t..t+K}|^2 + lam * regulariser(z)    (z': the other view)
           + mu * PoissonNLL(read-out(z_t), counts in bin t + 1)                              (count anchor)
           + w * mean |z_active[..., :k] - z_passive[..., :k]|^2 / var                       (replay term)

Count anchor (``loss.count_mode``). ``forward``: a third encoding, of the whole population (the latent
the teacher reports), predicts every unit's count in the NEXT bin; spiking noise is independent across bins, so
encoding the noise cannot help, and the encoder is trained on the input it is evaluated on (the views see half the
units each). ``cross``: each view's z_t predicts the counts in bin t of the units that view does not see (the
previous default): what co-smoothing asks, only the population's shared signal helps. ``both``: the mean of the two
(issue 16, docs/teacher.md "Real recordings"). ``auto`` (the default): forward where replay pairs tie the states (the
VBN case), both otherwise (a real recording, a generic two-state one), decided by the trainer (``anchor_mode`` in
teacher/train.py; the multi-session teacher keeps forward). The read-out's link is ``loss.count_link`` (softplus with a
per-unit gain, or exp; model.py). In forward (and both) mode the regulariser and the replay term see the
whole-population latent too (it is the one reported).

Replay term (``loss.replay_weight`` w, ``loss.replay_dims`` k; teacher/replay.py): a paired batch holds B/2 active
windows and, in the same order, the B/2 passive windows at the replayed times (same stimulus-driven latents,
another population code). The first k latent dims are tied (k < D leaves dims free for a state's own code,
which a shared count read-out needs; with ``loss.state_readout`` - one count read-out per state, so the read-out
carries the code - all D dims are tied by default). The mean is over batch, loss-window bins and the k dims;
``loss.replay_norm`` divides each dim's squared difference by its variance (:func:`replay_distance`), so
shrinking the tied dims cannot meet it.

Targets are the same encoder's latents with gradients flowing through them (LeJEPA: no stop-gradient, no EMA;
SIGReg alone prevents the trivial constant solution). ``loss.target = ema`` swaps in an EMA copy for ablation.
All randomness inside a step (augmentation, SIGReg directions) comes from generators seeded by the global step,
so a resumed run replays exactly the same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging

import lightning as L
import torch
from torch import nn

from ..training import NanGuard
from .config import TeacherConfig
from .model import TeacherNet
from .sigreg import regulariser, sigreg_kwargs, world_size

log = logging.getLogger(__name__)


def spike_total(y: torch.Tensor) -> torch.Tensor:
    """y.sum(), the count anchor's normaliser; under DDP (W > 1 ranks) the mean over ranks of their local sums, so
    that DDP's average of the ranks' losses is the global batch's nats per spike (a per-rank ratio would not be).
    Counts carry no gradient: a plain all_reduce is exact here."""
    total = y.sum()
    if world_size() > 1:
        total = total.detach().clone()
        torch.distributed.all_reduce(total)
        total = total / world_size()
    return total


def state_readout_eta(z: torch.Tensor, state: torch.Tensor, per_state: list[nn.Linear], shared: nn.Linear,
                      tied: int) -> torch.Tensor:
    """The per-state count read-out's linear predictor: z (B, T, D), state (B,) codes -> (B, T, U).

    ``tied`` >= D (every latent dim tied across replay pairs): each state's own linear map and bias.
    ``tied`` = k < D: each state's own weights act on the tied dims z[..., :k], centred on the batch mean (no bias),
    and ONE map and bias shared by all states act on the free dims z[..., k:]. The state's change of the code (the
    weights) lives in the read-out, but a change of the rates that is the same for every stimulus (the state's
    rate offset) can come neither from a per-state bias nor, through the centring, from the tied dims' mean: the
    latent must carry it in the free dims, i.e. it encodes the brain state there, where one GLM across states
    (the cobps metric) can use it. Measured (docs/teacher.md): k = 31 beat k = 32 on gt_r2 (+0.013) and cobps
    (+0.014). Under DDP the batch mean is each rank's (a state-balanced batch either way)."""
    rows = torch.arange(z.shape[0])
    if tied >= z.shape[-1]:
        return torch.stack([ro(z) for ro in per_state])[state, rows]  # (S, B, T, U); S is 2-3, cheap
    zt = z[..., :tied] - z[..., :tied].mean(dim=(0, 1), keepdim=True)
    own = torch.stack([nn.functional.linear(zt, ro.weight[:, :tied]) for ro in per_state])[state, rows]
    return own + nn.functional.linear(z[..., tied:], shared.weight[:, tied:], shared.bias)


def replay_distance(z: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Mean squared difference between the first and second half of a batch of latents z: (B, T, k) (rows i and
    i + B/2 are replay partners). normalise: each dim's squared difference is divided by that dim's variance over
    the batch and time (both halves), so the term is scale-free (2 (1 - corr) per dim for equal variances): with
    the raw difference the tied dims simply shrank (per-dim std 0.2 at weight 10, docs/teacher.md)."""
    h = z.shape[0] // 2
    sq = (z[:h] - z[h:]).square().mean(dim=(0, 1))  # (k,)
    if normalise:
        sq = sq / (z.var(dim=(0, 1)) + 1e-4)
    return sq.mean()


class TeacherModule(NanGuard, L.LightningModule):
    def __init__(self, cfg: TeacherConfig, n_units: int, session: str = "session", n_states: int = 1):
        """n_states: how many state codes batches may carry (for ``loss.state_readout``)."""
        super().__init__()
        self.cfg, self.session = cfg, session
        m = cfg.model
        # model.state_readin: state code i > 0 reads in through its own linear map, keyed "<session>@<i>"
        self.state_keys = [session] + ([f"{session}@{i}" for i in range(1, n_states)] if m.state_readin else [])
        self.net = TeacherNet.from_config(cfg, {k: n_units for k in self.state_keys})
        self.target_net = None
        if cfg.loss.target == "ema":
            self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.warm = self.net.receptive_field - 1
        self.diverged_at: int | None = None
        # per-state count read-outs live here, not in TeacherNet: they serve training only (cobps fits its own GLM);
        # with one state they would equal the shared one (and sit unused, which DDP refuses)
        self.state_readout = (nn.ModuleList([nn.Linear(m.embed_dim, n_units) for _ in range(n_states)])
                              if cfg.loss.state_readout and n_states > 1 else None)
        # regulariser within each state (loss.reg_per_state): "always", or decided from the data by the trainer for
        # "auto" (teacher/train.py: on when there are >= 2 states and no replay pairs)
        self.reg_per_state = cfg.loss.reg_per_state == "always"
        # (n_states, D) train-block mean latent of each state, subtracted when encoding (loss.state_centring); set
        # by the trainer after training (teacher/state_centring.py), None = uncentred
        self.state_centres = None
        # the count anchor's mode (loss.count_mode); "auto" is decided from the data by the trainer
        # (teacher/train.py anchor_mode: forward with replay pairs, both without), forward until then
        self.count_mode = "forward" if cfg.loss.count_mode == "auto" else cfg.loss.count_mode

    def init_readout_bias(self, mean_counts: torch.Tensor) -> None:
        """Start every count read-out at the units' mean count per bin (U,): the anchor's gradient is then all
        signal (:meth:`TeacherNet.init_count_readout`)."""
        self.net.init_count_readout([self.net.count_readout[self.session], *(self.state_readout or [])],
                                    mean_counts, self.session)

    def encode(self, net: TeacherNet, counts: torch.Tensor, scale: torch.Tensor | None = None,
               state: torch.Tensor | None = None) -> torch.Tensor:
        """net.encode with each window read in through its state's read-in (``model.state_readin``; one shared
        read-in otherwise or without state codes): counts (B, L, U), scale broadcastable, state (B,) -> (B, L, D).
        Windows are encoded per state in sub-batches; every layer acts per window, so this equals one pass."""
        if len(self.state_keys) == 1 or state is None:
            return net.encode(counts, self.session, scale)
        z = None
        for code in torch.unique(state).tolist():
            idx = torch.nonzero(state == code).squeeze(1)
            sc = scale[idx] if scale is not None and scale.shape[0] == counts.shape[0] else scale
            part = net.encode(counts[idx], self.state_keys[code], sc)
            z = part.new_zeros(counts.shape[0], *part.shape[1:]) if z is None else z
            z = z.index_copy(0, idx, part)
        return z

    def state_readouts_of_session(self) -> list[nn.Linear] | None:
        """The current session's per-state count read-outs, state code order (None: one shared read-out)."""
        return list(self.state_readout) if self.state_readout is not None else None

    def readout(self, z: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """z: (B, T, D) -> (B, T, U) the count read-out's linear predictor: the shared read-out, or each window's
        state's one (:func:`state_readout_eta`)."""
        per_state = self.state_readouts_of_session()
        if per_state is None or state is None:
            return self.net.readout(z, self.session)
        return state_readout_eta(z, state, per_state, self.net.count_readout[self.session], self.cfg.loss.replay_dims)

    def count_nll(self, z: torch.Tensor, y: torch.Tensor, state: torch.Tensor | None,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
        """Poisson NLL (without the log y! term) of counts y (B, T, U) given latents z (B, T, D), in nats per
        spike (so mu does not depend on the firing rates, like bits/spike); weight (broadcastable, 0/1) picks units."""
        eta = self.readout(z, state)
        if self.net.count_link == "exp":  # the log-linear GLM: exp(eta) - y * eta, computed stably
            nll = nn.functional.poisson_nll_loss(eta, y, log_input=True, full=False, reduction="none")
        else:
            rate = self.net.expected_counts(eta, self.session)
            nll = rate - y * torch.log(rate)
        if weight is None:
            return nll.sum() / spike_total(y).clamp_min(1.0)
        return (nll * weight).sum() / spike_total(y * weight).clamp_min(1.0)

    # ----------------------------------------------------------------------------------------------- the loss
    def _views(self, counts: torch.Tensor, step: int) -> tuple[tuple[torch.Tensor, ...], tuple]:
        """The two views' input scales (each (B, 1, U): mask * 2 * per-unit gain jitter * dropout, see
        :meth:`TeacherNet.view_masks`) and their 0/1 masks; with the forward count anchor a third scale, the whole
        population's (gain jitter only). The jitter changes the code's read-out, not the dynamics."""
        a = self.cfg.augment
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + step)
        b, _, u = counts.shape
        masks = self.net.view_masks(b, self.session, g)
        gain = torch.exp(a.gain_jitter * torch.randn(2, b, 1, u, generator=g))
        if a.unit_dropout > 0:  # silenced units, the survivors scaled so the expected drive is unchanged
            gain = gain * (torch.rand(2, b, 1, u, generator=g) >= a.unit_dropout) / (1 - a.unit_dropout)
        gain = gain.to(counts)
        scales = (2 * masks[0] * gain[0], 2 * masks[1] * gain[1])
        if self.forward_anchor:
            scales += (torch.exp(a.gain_jitter * torch.randn(b, 1, u, generator=g)).to(counts),)
        return scales, masks

    @property
    def forward_anchor(self) -> bool:
        return self.cfg.loss.count_weight > 0 and self.count_mode in ("forward", "both")

    @property
    def cross_anchor(self) -> bool:
        return self.cfg.loss.count_weight > 0 and self.count_mode in ("cross", "both")

    def losses(self, counts: torch.Tensor, views: tuple, step: int, state: torch.Tensor | None = None,
               paired: bool = False) -> dict[str, torch.Tensor]:
        """counts: (B, warm + window + K, U); views: (scales, masks) from :meth:`_views`; state: (B,) state codes
        (for ``loss.state_readout``); paired: rows B/2.. are the replay partners of rows ..B/2 -> dict(loss, pred,
        reg, count, replay).

        Each view's z_t predicts the other view's z_{t..t+K} (symmetrised); the regulariser sees both; with
        ``loss.count_weight`` > 0 the count anchor (module docstring): ``forward``, the whole population's z_t
        predicts every unit's count in bin t + 1 (and joins the regulariser and the replay term); ``cross``, each
        view's z_t predicts the counts in bin t of the units only the other view sees."""
        c, k, w = self.cfg, self.net.horizon, self.cfg.train.window
        scales, masks = views
        z = [self.encode(self.net, counts, sc, state) for sc in scales[:2]]  # 2 x (B, L, D)
        if self.target_net is not None:
            with torch.no_grad():
                z_tgt = [self.encode(self.target_net, counts, sc, state) for sc in scales[:2]]
        else:
            z_tgt = z
        pred_loss = reg = count_loss = replay = torch.zeros(())

        def reg_of(zc: torch.Tensor, i: int) -> torch.Tensor:  # encoding i's regulariser (its own directions' seed)
            zs = zc[:, ::c.loss.time_stride]
            if self.reg_per_state and state is not None:  # the mean over the batch's states of each one's own
                return torch.stack([regulariser(c.loss.regulariser, zs[state == code], step,
                                                **sigreg_kwargs(c.loss, c.train.seed + i))
                                    for code in torch.unique(state).tolist()]).mean()
            return regulariser(c.loss.regulariser, zs, step, **sigreg_kwargs(c.loss, c.train.seed + i))

        def tie(zc: torch.Tensor) -> torch.Tensor:  # replay distance of the tied dims
            return replay_distance(zc[..., :c.loss.replay_dims], c.loss.replay_norm)

        for i in range(2):
            z_ctx = z[i][:, self.warm:self.warm + w]  # (B, window, D)
            # targets[b, t, j] = z_other[b, warm + t + j] for j <= K: (B, window, K + 1, D); j = 0 is the
            # cross-view agreement now, j >= 1 the forecast
            targets = z_tgt[1 - i][:, self.warm:].unfold(1, k + 1, 1)[:, :w].permute(0, 1, 3, 2)
            pred_loss = pred_loss + 0.5 * (self.net.predict(z_ctx) - targets).square().mean()
            reg = reg + 0.5 * reg_of(z_ctx, i)
            if self.cross_anchor:
                other = masks[1 - i]  # (B, 1, U): units view i never sees
                count_loss = count_loss + 0.5 * self.count_nll(z_ctx, counts[:, self.warm:self.warm + w], state, other)
            if paired and c.loss.replay_weight > 0:
                replay = replay + 0.5 * tie(z_ctx)
        if self.forward_anchor:
            z_all = self.encode(self.net, counts, scales[2], state)[:, self.warm:self.warm + w]
            forward = self.count_nll(z_all, counts[:, self.warm + 1:self.warm + w + 1], state)
            count_loss = 0.5 * (count_loss + forward) if self.cross_anchor else forward
            reg = (2 * reg + reg_of(z_all, 2)) / 3
            if paired and c.loss.replay_weight > 0:
                replay = 0.5 * replay + 0.5 * tie(z_all)
        loss = ((1 - c.loss.lam) * pred_loss + c.loss.lam * reg + c.loss.count_weight * count_loss
                + c.loss.replay_weight * replay)
        return dict(loss=loss, pred=pred_loss.detach(), reg=reg.detach(), count=count_loss.detach(),
                    replay=replay.detach())

    # ------------------------------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx):
        """batch: a :class:`~neurojepa.data.windows.WindowBatch` (paired: rows B/2.. are the replay partners)."""
        step = int(self.global_step)
        counts = self.batch_counts(batch)
        out = self.losses(counts, self._views(counts, step), step, batch.state, batch.paired)
        loss = self.guard(out["loss"])  # NaN guard: skip, stop, and let the caller report (training.py)
        if loss is None:
            return None
        self.log_dict({"train_loss": out["loss"], "train_pred": out["pred"], "train_reg": out["reg"],
                       "train_count": out["count"], "train_replay": out["replay"]},
                      prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch))
        if self.trainer.world_size > 1:
            loss = loss + self.unused_parameter_zero()
        return loss

    def batch_counts(self, batch) -> torch.Tensor:
        """The counts (B, L, U) the loss reads from a batch (the multi-session teacher also picks its session)."""
        return batch.counts

    def unused_parameter_zero(self) -> torch.Tensor:
        """An exact zero touching every trainable parameter. Under DDP a state absent from this rank's batch (the
        gray block never is in a replay pair), or another rank's session, leaves its read-in / read-out without
        a gradient, which DDP's buckets refuse (the alternative, find_unused_parameters, walks the graph each
        step)."""
        if self.state_readout is None and len(self.state_keys) == 1:
            return torch.zeros(())
        return 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.target_net is not None:
            d = self.cfg.loss.ema_decay
            with torch.no_grad():
                for pt, p in zip(self.target_net.parameters(), self.net.parameters()):
                    pt.mul_(d).add_(p.detach(), alpha=1 - d)

    def validation_step(self, batch, batch_idx):
        counts = self.batch_counts(batch)  # fixed views/directions every epoch
        out = self.losses(counts, self._views(counts, batch_idx), batch_idx, batch.state, batch.paired)
        self.log_dict({"val_loss": out["loss"], "val_pred": out["pred"], "val_reg": out["reg"],
                       "val_count": out["count"]},
                      prog_bar=True, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self):
        t = self.cfg.train
        return torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
