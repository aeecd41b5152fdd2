"""Teacher options, with their defaults in one place (loaded by :func:`neurojepa.config.load_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError

_CHOICES = {"regulariser": ("sigreg", "vicreg", "none"), "target": ("self", "ema"),
            "count_mode": ("auto", "forward", "cross", "both"), "count_link": ("softplus", "exp"),
            "reg_per_state": ("auto", "always", "never"), "state_centring": ("auto", "always", "never")}


@dataclass
class ModelConfig:
    """Per-session read-in -> causal temporal encoder (dilated TCN) -> latent z_t; a predictor of z_{t+1..t+K}."""

    width: int = 64                    # channels of the temporal encoder
    embed_dim: int = 32                # latent z_t dimensions
    kernel: int = 3                    # causal conv kernel (bins)
    smooth_bins: int = 16              # learnable causal input filter (exponential init, tau 5 bins)
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # receptive field 16 + 2*15 = 46 bins
    horizon: int = 10                  # K: the predictor forecasts z_{t+1..t+K}
    predictor_hidden: int = 0          # 0: linear predictor of future latents (default); > 0: MLP of this width
    views: str = "masked"              # masked (a random half of the units per window) | halves (fixed halves)
    linear_skip: bool = True           # z = TCN head + a linear map of the smoothed read-in
    input_transform: str = "sqrt"      # sqrt | log1p of counts before the read-in (sqrt: variance-stabilising)
    state_readin: bool = False         # one read-in per behavioural state (the state label becomes an input)


@dataclass
class LossConfig:
    """(1 - lam) * prediction + lam * regulariser + count_weight * Poisson NLL (+ replay term)."""

    regulariser: str = "sigreg"        # sigreg | vicreg | none
    lam: float = 0.3                   # loss = (1 - lam) * prediction + lam * regulariser (0: prediction only, 1: regulariser only)
    num_slices: int = 256              # SIGReg random directions per step
    spectral_slices: int = 4           # + SIGReg along this many principal axes of the batch: half of largest, the rest of smallest variance, cross-fitted (0 = off)
    spectral_weight: float = 0.4       # weight of the spectral slices' mean statistic beside the random slices' mean
    time_stride: int = 4               # SIGReg on every 4th time step (latents are smooth; cos/sin dominate cost)
    time_weight: float = 0.0           # weight of SIGReg across time inside windows (0 = off)
    target: str = "self"               # self (LeJEPA: same encoder, no stop-grad) | ema (ablation)
    ema_decay: float = 0.99            # decay of the EMA target encoder (only with target=ema)
    count_weight: float = 100.0        # mu: + mu * Poisson NLL (nats/spike) of the count anchor (0 = pure LeJEPA)
    count_mode: str = "auto"           # forward: whole-population z_t -> every unit's count in bin t+1 | cross: view's z_t -> other view's units, bin t | both: their mean | auto: forward with replay pairs, both without
    count_link: str = "softplus"       # softplus: rate = gain_u * softplus(a_u.z + b_u) | exp: rate = exp(a_u.z + b_u)
    replay_weight: float = 3.0         # + w * mean |z_a[:k] - z_p[:k]|^2 / var of replay-paired active/passive windows (0 = off)
    replay_dims: int = 31              # k: latent dims tied across replay pairs, 1 to model.embed_dim; the rest carry the brain state
    replay_norm: bool = True           # divide each tied dim's squared difference by its batch variance (shrinking cannot meet it)
    state_readout: bool = True         # count anchor read-out per state (True) or one shared read-out (False)
    reg_per_state: str = "auto"        # regulariser within each state (every state's latents pushed to the same N(0, I)): auto (on when the data have >= 2 states and no replay pairs; single teacher, one process) | always | never
    state_centring: str = "auto"       # after training, subtract each state's train-block mean from the latent: auto (wherever the regulariser acts within each state) | always (with >= 2 states) | never


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
    max_epochs: int = 7                # training epochs (the curve of epochs vs held-out metrics: docs/budget.md)
    patience: int = 6                  # early stopping on val loss, in epochs
    val_windows: int = 256             # fixed val windows scored each epoch
    threads: int = 0                   # torch threads; 0 = every CPU this process may use (os.sched_getaffinity)
    progress: bool = True              # show the training progress bar
    accelerator: str = "auto"          # Lightning accelerator: auto (CUDA when present, else CPU) | cpu | gpu
    devices: int = 1                   # processes/GPUs per node (DDP when > 1 with strategy=ddp; docs/scale.md)
    strategy: str = "auto"             # Lightning strategy: auto | ddp | ddp_spawn (several devices or nodes)
    num_nodes: int = 1                 # machines (SLURM: one srun task per device; docs/scale.md)
    precision: str = "32-true"         # 32-true | bf16-mixed (GPU; SIGReg and CCA must stay float32, docs/scale.md)


@dataclass
class EvalConfig:
    """Held-out evaluation: co-smoothing units, baselines, decoding features."""

    heldout_fraction: float = 0.2      # units hidden from the encoder, for co-smoothing
    smooth_ms: float = 50.0            # causal exponential smoothing of counts for the baselines
    flash_window_ms: float = 250.0     # decoding features: mean latent over this window after flash onset
    baselines: bool = True             # score PCA, raw counts and FA beside the teacher
    cebra: bool = False                # also train CEBRA-Time as a baseline (needs the bench extra; minutes of CPU)


@dataclass
class TeacherConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def check_choices(cfg: TeacherConfig, prefix: str = "") -> None:
    """Raise :class:`InputError` naming the key when a ``loss.*`` option is not one of its choices (or a count
    or weight that must not be negative is), or when two options do not fit together (:func:`check_combinations`).
    prefix: put before the key in the message (``"teacher."`` inside a run config)."""
    for key, choices in _CHOICES.items():
        value = getattr(cfg.loss, key)
        if value not in choices:
            raise InputError(f"{prefix}loss.{key}", f"'{value}' is not one of {', '.join(choices)}")
    for key in ("lam", "num_slices", "spectral_slices", "spectral_weight", "count_weight", "replay_weight"):
        value = getattr(cfg.loss, key)
        if value < 0:
            raise InputError(f"{prefix}loss.{key}", f"must be >= 0, got {value}")
    check_combinations(cfg, prefix)


def check_combinations(cfg: TeacherConfig, prefix: str = "") -> None:
    """Options that are valid alone but not together, as an :class:`InputError` naming the key to change.

    ``loss.replay_dims`` k counts latent dims: the first k of ``model.embed_dim`` D are tied across replay pairs
    (``loss.replay_weight`` > 0) and, with ``loss.state_readout``, get each state's own read-out weights while the
    other D - k carry the brain state (module.state_readout_eta). k = D ties every dim; k > D is not a dim count,
    and the model would silently fall back to tying all D (with ``model.embed_dim`` lowered below the default
    k = 31, say)."""
    loss, d = cfg.loss, cfg.model.embed_dim
    if loss.reg_per_state == "always" and cfg.train.devices * cfg.train.num_nodes > 1:
        raise InputError(f"{prefix}loss.reg_per_state", "is for one process: under data parallelism the ranks' "
                                                         "batches hold different states, and SIGReg's reduction "
                                                         "across ranks needs the same groups on every rank")
    if (loss.replay_weight > 0 or loss.state_readout) and not 0 < loss.replay_dims <= d:
        raise InputError(f"{prefix}loss.replay_dims", f"{loss.replay_dims} must be between 1 and model.embed_dim "
                                                      f"({d}): it counts the latent dims tied across replay pairs "
                                                      f"(set it to {d} to tie every dim)")
