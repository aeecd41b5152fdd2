"""The LeJEPA training step as a LightningModule (read top to bottom: augment, encode, predict, regularise).

Each batch holds windows of ``warm + window + K`` bins, where warm = receptive_field - 1: the first warm bins
only give the causal encoder its history (so training sees the same context as encoding a whole recording), the
next ``window`` bins carry the loss, and the last K bins supply the forecast targets.

    loss = (1 - lam) * mean |predict(z_t) - z'_{t..t+K}|^2 + lam * regulariser(z)    (z': the other view)
           + mu * PoissonNLL(exp(readout(z_t)), counts of the other view's units in bin t)   (count anchor)

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

from .config import TeacherConfig
from .model import TeacherNet
from .sigreg import regulariser

log = logging.getLogger(__name__)


class TeacherModule(L.LightningModule):
    def __init__(self, cfg: TeacherConfig, n_units: int, session: str = "session"):
        super().__init__()
        self.cfg, self.session = cfg, session
        m = cfg.model
        self.net = TeacherNet({session: n_units}, width=m.width, embed_dim=m.embed_dim, kernel=m.kernel,
                              dilations=tuple(m.dilations), horizon=m.horizon, predictor_hidden=m.predictor_hidden,
                              seed=cfg.train.seed, smooth_bins=m.smooth_bins, input_transform=m.input_transform,
                              linear_skip=m.linear_skip, view_mode=m.views)
        self.target_net = None
        if cfg.loss.target == "ema":
            self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.warm = self.net.receptive_field - 1
        self.diverged_at: int | None = None

    # ----------------------------------------------------------------------------------------------- the loss
    def _views(self, counts: torch.Tensor, step: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple]:
        """The two views' input scales (each (B, 1, U): mask * 2 * per-unit gain jitter * dropout, see
        :meth:`TeacherNet.view_masks`) and their 0/1 masks. The jitter changes the code's read-out, not the
        dynamics."""
        a = self.cfg.augment
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + step)
        b, _, u = counts.shape
        masks = self.net.view_masks(b, self.session, g)
        gain = torch.exp(a.gain_jitter * torch.randn(2, b, 1, u, generator=g))
        if a.unit_dropout > 0:  # silenced units, the survivors scaled so the expected drive is unchanged
            gain = gain * (torch.rand(2, b, 1, u, generator=g) >= a.unit_dropout) / (1 - a.unit_dropout)
        gain = gain.to(counts)
        return (2 * masks[0] * gain[0], 2 * masks[1] * gain[1]), masks

    def losses(self, counts: torch.Tensor, views: tuple, step: int) -> dict[str, torch.Tensor]:
        """counts: (B, warm + window + K, U); views: (scales, masks) from :meth:`_views` -> dict(loss, pred, reg,
        count).

        Each view's z_t predicts the other view's z_{t..t+K} (symmetrised); the regulariser sees both; with
        ``loss.count_weight`` > 0 each view's z_t also predicts, through the Poisson read-out, the counts in bin
        t of the units only the other view sees."""
        c, k, w = self.cfg, self.net.horizon, self.cfg.train.window
        scales, masks = views
        z = [self.net.encode(counts, self.session, sc) for sc in scales]  # 2 x (B, L, D)
        if self.target_net is not None:
            with torch.no_grad():
                z_tgt = [self.target_net.encode(counts, self.session, sc) for sc in scales]
        else:
            z_tgt = z
        pred_loss = reg = count_loss = torch.zeros(())
        for i in range(2):
            z_ctx = z[i][:, self.warm:self.warm + w]  # (B, window, D)
            # targets[b, t, j] = z_other[b, warm + t + j] for j <= K: (B, window, K + 1, D); j = 0 is the
            # cross-view agreement now, j >= 1 the forecast
            targets = z_tgt[1 - i][:, self.warm:].unfold(1, k + 1, 1)[:, :w].permute(0, 1, 3, 2)
            pred_loss = pred_loss + 0.5 * (self.net.predict(z_ctx) - targets).square().mean()
            reg = reg + 0.5 * regulariser(c.loss.regulariser, z_ctx[:, ::c.loss.time_stride], step,
                                          num_slices=c.loss.num_slices, seed=c.train.seed + i,
                                          time_weight=c.loss.time_weight)
            if c.loss.count_weight > 0:
                other = masks[1 - i]  # (B, 1, U): units view i never sees
                y = counts[:, self.warm:self.warm + w]
                nll = nn.functional.poisson_nll_loss(self.net.log_rates(z_ctx, self.session), y, log_input=True,
                                                     full=False, reduction="none")
                # nats per spike, so that mu does not depend on the firing rates (like bits/spike)
                count_loss = count_loss + 0.5 * (nll * other).sum() / (y * other).sum().clamp_min(1.0)
        loss = (1 - c.loss.lam) * pred_loss + c.loss.lam * reg + c.loss.count_weight * count_loss
        return dict(loss=loss, pred=pred_loss.detach(), reg=reg.detach(), count=count_loss.detach())

    # ------------------------------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        out = self.losses(batch, self._views(batch, step), step)
        if not torch.isfinite(out["loss"]):
            # NaN guard: skip this update, stop, and let teach() report; the last checkpoint stays the good one
            self.diverged_at = step
            self.trainer.should_stop = True
            log.error("teacher: non-finite loss at step %d; stopping", step)
            return None
        self.log_dict({"train_loss": out["loss"], "train_pred": out["pred"], "train_reg": out["reg"],
                       "train_count": out["count"]},
                      prog_bar=True, on_step=True, on_epoch=False)
        return out["loss"]

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if any(not torch.isfinite(g).all() for g in grads):
            self.diverged_at = int(self.global_step)
            self.trainer.should_stop = True
            for g in grads:
                g.zero_()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.target_net is not None:
            d = self.cfg.loss.ema_decay
            with torch.no_grad():
                for pt, p in zip(self.target_net.parameters(), self.net.parameters()):
                    pt.mul_(d).add_(p.detach(), alpha=1 - d)

    def validation_step(self, batch, batch_idx):
        out = self.losses(batch, self._views(batch, batch_idx), batch_idx)  # fixed views/directions every epoch
        self.log_dict({"val_loss": out["loss"], "val_pred": out["pred"], "val_reg": out["reg"],
                       "val_count": out["count"]},
                      prog_bar=True, on_epoch=True, batch_size=batch.shape[0])

    def configure_optimizers(self):
        t = self.cfg.train
        return torch.optim.AdamW(self.net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
