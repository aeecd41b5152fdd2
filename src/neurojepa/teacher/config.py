"""Teacher options, with their defaults in one place (loaded by :func:`neurojepa.config.load_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Per-session read-in -> causal temporal encoder (dilated TCN) -> latent z_t; an MLP predictor of z_{t+1..t+K}."""

    width: int = 64                    # channels of the temporal encoder
    embed_dim: int = 32                # latent z_t dimensions
    kernel: int = 3                    # causal conv kernel (bins)
    smooth_bins: int = 16              # learnable causal input filter (exponential init, tau 5 bins)
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # receptive field 16 + 2*15 = 46 bins
    horizon: int = 10                  # K: the predictor forecasts z_{t+1..t+K}
    predictor_hidden: int = 128        # hidden width of the MLP predictor of future latents
    views: str = "masked"              # masked (a random half of the units per window) | halves (fixed halves)
    linear_skip: bool = True           # z = TCN head + a linear map of the smoothed read-in
    input_transform: str = "sqrt"      # sqrt | log1p of counts before the read-in (sqrt: variance-stabilising)


@dataclass
class LossConfig:
    """(1 - lam) * prediction + lam * regulariser (+ count_weight * Poisson NLL of unseen units)."""

    regulariser: str = "sigreg"        # sigreg | vicreg | none
    lam: float = 0.05                  # loss = (1 - lam) * prediction + lam * regulariser
    num_slices: int = 32               # SIGReg random directions per step
    time_stride: int = 4               # SIGReg on every 4th time step (latents are smooth; cos/sin dominate cost)
    time_weight: float = 0.0           # weight of SIGReg across time inside windows (0.25 pushed latents to noise)
    target: str = "self"               # self (LeJEPA: same encoder, no stop-grad) | ema (ablation)
    ema_decay: float = 0.99            # decay of the EMA target encoder (only with target=ema)
    count_weight: float = 100.0        # mu: + mu * Poisson NLL (nats/spike) of the hidden units' counts from z_t (0 = pure LeJEPA)


@dataclass
class AugmentConfig:
    """Perturbations of the population code that leave the dynamics alone (per window)."""

    gain_jitter: float = 0.2           # per-unit multiplicative gain ~ exp(N(0, s^2)), per window and view
    unit_dropout: float = 0.0          # each input unit silenced with this probability, per window and view


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and early stopping (PyTorch Lightning)."""

    seed: int = 0                      # everything random in training derives from it (deterministic on CPU)
    window: int = 64                   # bins with a loss per window (plus the encoder's warm-up)
    stride: int = 16                   # bins between the starts of consecutive training windows
    batch_size: int = 64               # windows per step (SIGReg is a batch statistic: keep it >= 32)
    lr: float = 3e-3                   # AdamW learning rate
    weight_decay: float = 1e-4         # AdamW weight decay
    steps_per_epoch: int = 50          # training steps per epoch (windows drawn by a seeded, state-balanced sampler)
    max_epochs: int = 4                # the gt_r2 plateau is reached by epoch 4 (docs/teacher.md); fits the time budget
    patience: int = 6                  # early stopping on val loss, in epochs
    val_windows: int = 256             # fixed val windows scored each epoch
    threads: int = 1                   # torch threads (the machine is shared)
    progress: bool = True              # show the training progress bar


@dataclass
class EvalConfig:
    """Held-out evaluation: co-smoothing units, baselines, decoding features."""

    heldout_fraction: float = 0.2      # units hidden from the encoder, for co-smoothing
    smooth_ms: float = 50.0            # causal exponential smoothing of counts for the baselines
    flash_window_ms: float = 250.0     # decoding features: mean latent over this window after flash onset
    baselines: bool = True             # score PCA, raw counts, FA (and CEBRA when installed) beside the teacher


@dataclass
class TeacherConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
