"""Configuration: one dataclass per concern, the design's flags (docs/design.md), presets and
validation.

Every flag of the VMamba-TD3 document keeps its exact name (``--vmamba_hidden_dim``, ``--seq_len`` ...).
Values resolve in three layers: dataclass defaults (the design's values) < ``--preset`` < explicit flags.
Bad values fail at parse time with a message naming the flag and what would be right (exit code 2
through the CLI, :class:`ConfigError` from Python).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag and the allowed values."""


ALGORITHMS = ("vmamba_td3", "td3", "hope_sac")
SCAN_BACKENDS = ("auto", "reference", "chunked", "cpu", "triton")
FUSIONS = ("mlp", "attention")
IMAGE_ENCODERS = ("cnn", "vmamba")
AMP_MODES = ("off", "bf16", "fp16")
CRITIC_NORMS = ("joint", "state")
VECTOR_MODES = ("sync", "async")


def opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None, parse: Any = None) -> Any:
    """One option's home: its default, help text, allowed values (``choices``, checked by
    :func:`validate`) and how the command line parses it when the default does not say (``parse``: a
    type for None defaults, ``"str_list"`` for a list of strings, ``"json"`` for a JSON object,
    ``"json_list"`` for several). The CLI flag, its ``--help`` line and the allowed-values check
    derive from it."""
    meta = {"help": help, "choices": choices, "parse": parse}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class VMambaConfig:
    """The visual encoder (VMambaRLTiny) and the sequence encoder (TemporalMamba, CrossAttention)."""

    # The design document's default is 16, but its data-flow section puts stage 1 at H/4; the stem
    # stride wins here (see docs/deviations.md): patch 4 = VMamba's two stride-2 3x3 convs.
    vmamba_patch_size: int = opt(
        4, "stem stride: 4 = two stride-2 3x3 convs (VMamba v2), other powers of 2 = one conv"
    )
    vmamba_hidden_dim: int = opt(
        64, "channels of the VMamba encoder's first stage (doubled at each of the 4 stages)"
    )
    vmamba_num_vss_blocks: list[int] = opt([2, 2, 4, 2], "VSS blocks in each of the 4 stages")
    vmamba_drop_path_rate: float = opt(0.1, "stochastic-depth rate of the VSS blocks (in [0, 1))")
    vmamba_layer_scale_init: float = opt(1e-6, "initial LayerScale gamma in VSS blocks; 0 disables it")
    vmamba_ssm_d_state: int = opt(16, "state size of each selective-scan channel (VMamba v2 uses 1)")
    vmamba_ssm_ratio: float = opt(2.0, "SS2D inner channels as a multiple of the block's channels")
    vmamba_mlp_ratio: float = opt(4.0, "hidden width of the VSS blocks' MLP as a multiple of their channels")
    vmamba_temporal_layers: int = opt(1, "TemporalMamba layers over the K-step sequence (0 = none)")
    vmamba_num_heads: int = opt(4, "CrossAttention heads (must divide --hidden_dim)")
    vmamba_use_checkpoint: bool = opt(
        False, "gradient checkpointing in the VSS blocks (less memory, more compute)"
    )
    vmamba_input_adapter: bool = opt(False, "a 1x1 conv from the depth channels to 3 before the stem")
    scan_backend: str = opt("auto", "selective-scan implementation", choices=SCAN_BACKENDS)
    feature_dim: int = opt(128, "visual feature size per frame (Dv)")
    state_feature_dim: int = opt(128, "StateMLP output size per step (Dsf)")
    hidden_dim: int = opt(256, "fusion / temporal / context width (Dh) and the heads' hidden width")

    # The models take plain arguments; these two are the one place that maps option names onto them.
    def backbone_kwargs(self) -> dict[str, Any]:
        """``VMambaRLTiny`` / ``VMambaVisualEncoder`` keyword arguments (all but the image shape and
        ``out_features``)."""
        return dict(
            patch_size=self.vmamba_patch_size,
            hidden_dim=self.vmamba_hidden_dim,
            depths=tuple(self.vmamba_num_vss_blocks),
            d_state=self.vmamba_ssm_d_state,
            ssm_ratio=self.vmamba_ssm_ratio,
            mlp_ratio=self.vmamba_mlp_ratio,
            drop_path_rate=self.vmamba_drop_path_rate,
            layer_scale_init=self.vmamba_layer_scale_init,
            input_adapter=self.vmamba_input_adapter,
            use_checkpoint=self.vmamba_use_checkpoint,
            backend=self.scan_backend,
        )

    def sequence_kwargs(self) -> dict[str, Any]:
        """``EncoderStream`` keyword arguments after the visual encoder and the state size."""
        return dict(
            state_feature_dim=self.state_feature_dim,
            hidden_dim=self.hidden_dim,
            temporal_layers=self.vmamba_temporal_layers,
            num_heads=self.vmamba_num_heads,
            d_state=self.vmamba_ssm_d_state,
            ssm_ratio=self.vmamba_ssm_ratio,
            backend=self.scan_backend,
        )


@dataclass
class TD3Config:
    """TD3 and the exploration noise."""

    actor_lr: float = opt(5e-4, "TD3 actor learning rate (Adam)")
    critic_lr: float = opt(1e-3, "TD3 critic learning rate (Adam)")
    encoder_lr: float | None = opt(
        None,
        "td3 / vmamba_td3: learning rate of the visual encoders (default: that of the side that trains "
        "them); lower keeps a critic-trained encoder from collapsing to one output for every frame",
        parse=float,
    )
    gamma: float = opt(0.99, "discount factor")
    tau: float = opt(0.005, "soft-update rate of the target networks")
    policy_noise: float = opt(0.2, "std of the target-policy smoothing noise (TD3)")
    critic_target: str = opt(
        "min",
        "how the two target critics combine in the TD3 target: min (clipped double Q, the design's) or "
        "mean (less pessimistic when the critics disagree)",
        choices=("min", "mean"),
    )
    explore_candidates: int = opt(
        0,
        "td3 / vmamba_td3, exploring only: also draw this many uniform actions per decision and act on "
        "whichever of them and the actor's scores highest on Q1 (then add the OU noise); 0 = the design's "
        "actor-only exploration. Lets collection follow the critic where the actor has collapsed",
    )
    actor_candidates: int = opt(
        0,
        "td3 / vmamba_td3, actor update: also draw this many uniform actions per replayed state and, where "
        "one scores higher on Q1 than the actor's action, pull the actor toward the best of them "
        "(squared distance, weight --actor_candidate_coef); 0 = the design's policy gradient alone. "
        "Lets the actor leave a local maximum of Q1 that its gradient cannot",
    )
    actor_candidate_coef: float = opt(
        1.0, "weight of the pull toward the best-scoring candidate (--actor_candidates)"
    )
    noise_clip: float = opt(0.2, "clip of the target-policy smoothing noise (TD3)")
    policy_freq: int = opt(2, "critic updates per actor and target update (TD3's delay)")
    ou_theta: float = opt(0.15, "mean reversion of the Ornstein-Uhlenbeck exploration noise")
    ou_sigma: float = opt(0.2, "initial scale of the OU exploration noise")
    ou_sigma_min: float = opt(0.01, "final scale of the OU noise (linear decay over --max_timesteps)")
    grad_clip: float = opt(10.0, "gradient-norm clip per network group")
    actor_reg: float = opt(
        0.0, "L2 penalty on the actor's pre-tanh output (keeps TD3 off the corners of the action box)"
    )
    normalize_base: bool = opt(False, "td3 / vmamba_td3: running mean/std normalisation of the base vector")
    share_encoder: bool = opt(
        False, "one encoder for actor and critic (critic trains it, actor reads detached features)"
    )
    critic_norm: str = opt(
        "joint",
        "critic input LayerNorm: joint (the design's: over context and action together) or state (context "
        "only, action appended raw)",
        choices=CRITIC_NORMS,
    )
    base_skip: bool = opt(
        False, "td3 / vmamba_td3: the heads also read the newest base vector directly (skip connection)"
    )
    augment_shift: int = opt(
        0,
        "td3 / vmamba_td3: DrQ random shift, translating the sampled windows' depth frames by up to this "
        "many pixels per axis (edges replicated) in every update; 0 = off",
    )
    cnn_channels: list[int] = opt(
        [32, 64, 64], "td3 baseline / SAC CNN: channels of the stride-2 conv layers"
    )


@dataclass
class SACConfig:
    """HOPE-style multimodal SAC (second document)."""

    sac_actor_lr: float = opt(3e-4, "hope_sac actor learning rate")
    sac_critic_lr: float = opt(3e-4, "hope_sac critic learning rate")
    sac_alpha_lr: float = opt(3e-4, "hope_sac temperature learning rate")
    sac_init_alpha: float = opt(0.2, "hope_sac initial temperature")
    mask_postprocess: bool = opt(
        False,
        "hope_sac on Parking-v0: drive one of the 42 full-speed action-mask actions, chosen by policy "
        "density x mask (HOPE's post-processing) instead of the policy's own action",
    )
    sac_target_entropy: float | None = opt(
        None, "hope_sac entropy target (default: -action dimensions)", parse=float
    )
    embed_size: int = opt(128, "hope_sac embedding size per modality")
    fusion: str = opt("mlp", "hope_sac fusion of the modality embeddings: mlp or attention", choices=FUSIONS)
    fusion_hidden: int = opt(256, "hope_sac fusion output width")
    attention_heads: int = opt(8, "hope_sac attention fusion: heads")
    attention_dim_head: int = opt(32, "hope_sac attention fusion: width per head")
    attention_depth: int = opt(1, "hope_sac attention fusion: transformer layers")
    attention_ff_dim: int = opt(128, "hope_sac attention fusion: feed-forward width")
    actor_hidden: list[int] = opt([256, 256], "hope_sac actor MLP widths")
    critic_hidden: list[int] = opt([256, 256], "hope_sac critic MLP widths")
    image_encoder: str = opt("cnn", "hope_sac image embedding: cnn or vmamba", choices=IMAGE_ENCODERS)
    normalize_keys: list[str] | None = opt(
        None,
        "hope_sac: observation keys with running mean/std normalisation (default: every vector modality)",
        parse="str_list",
    )
    modalities: list[str] | None = opt(
        None, "observation keys the agent reads, e.g. lidar target (default: all of them)", parse="str_list"
    )
    sac_target_update_interval: int = opt(
        1, "hope_sac: gradient updates between soft updates of the critic targets"
    )


@dataclass
class TrainConfig:
    """The off-policy loop: budget, replay, logging, evaluation, checkpoints."""

    algorithm_name: str = opt("vmamba_td3", "the algorithm", choices=ALGORITHMS)
    env_name: str = opt(
        "DroneNav-v0",
        "Gymnasium id: DroneNav-v0, Parking-v0, AirSimEnv-v42 or any registered Dict-observation id",
    )
    level: str | None = opt(
        None,
        "environment level (DroneNav: empty/easy/medium/hard, or several joined by commas, one drawn per "
        "episode; Parking: easy/normal/complex/extreme)",
        parse=str,
    )
    env_kwargs: dict[str, Any] | None = opt(
        None,
        'extra environment keywords as JSON, e.g. \'{"max_steps": 100, "image_height": 128}\'',
        parse="json",
    )
    # Easier stages trained before the task itself: each a dict of environment keywords over env_kwargs.
    curriculum: list[dict[str, Any]] | None = opt(
        None,
        "easier stages before the task, each a JSON object of environment keywords over --env_kwargs, "
        "e.g. '{\"goal_wall_margin\": 19}' '{\"goal_wall_margin\": 12}'; the next stage starts once "
        "the training success rate over --curriculum_window episodes reaches --curriculum_threshold; "
        "evaluation always runs the task itself; --curriculum with no stages turns a preset's off",
        parse="json_list",
    )
    curriculum_threshold: float = opt(
        0.7, "training success rate that moves the curriculum to its next stage"
    )
    curriculum_window: int = opt(50, "latest episodes of a curriculum stage that the success rate counts")
    trap_check: int = opt(
        0,
        "decisions into each attempt at which the loop checks for the crash-early trap: if the last 100 "
        "training episodes averaged fewer than --trap_min_length decisions and at most "
        "--trap_max_success of them succeeded, the learner restarts (fresh "
        "networks, replay and noise, seed + 1000 per restart; the budget counts every attempt); 0 = off",
    )
    trap_min_length: float = opt(
        5.0, "mean training episode length (decisions) under which --trap_check restarts"
    )
    trap_max_success: float = opt(
        1.0,
        "training success rate of those 100 episodes above which --trap_check does not restart (short "
        "episodes may be quick successes on a curriculum's near goals); 1.0 = judge the lengths alone",
    )
    trap_restarts: int = opt(2, "most restarts --trap_check makes in one run")
    trap_candidates: int = opt(
        -1,
        "--explore_candidates of the attempts after a --trap_check restart (-1 = the same as the first "
        "attempt; 0 = explore with the noise alone)",
    )
    max_timesteps: int = opt(200000, "agent decisions to train for (summed over environments)")
    buffer_size: int = opt(20000, "replay capacity in transitions (split evenly over environments)")
    batch_size: int = opt(128, "windows per gradient update")
    seq_len: int = opt(4, "K: steps of history the agent reads")
    replay_segment: int = opt(
        1,
        "sample batches as runs of this many consecutive transitions (1 = independent); the TD3 agents "
        "then encode each distinct frame once, ~(M+K)/M instead of K frames per window",
    )
    n_step: int = opt(1, "n-step returns in the critic targets (1 = one-step TD as in the design)")
    action_repeat: int = opt(
        1,
        "hold each action for this many environment steps, rewards summed (1 = off); --max_timesteps, "
        "intervals and logs then count agent decisions",
    )
    rs_hybrid: bool = opt(
        False,
        "Parking-v0: HOPE's hybrid policy; within --rs_max_dist of the target a collision-free "
        "Reeds-Shepp path takes over and its actions enter replay like the policy's",
    )
    scene_schedule: bool = opt(
        False,
        "Parking-v0: train on HOPE's scene schedule over Normal / Complex (bay, parallel) and Extreme, "
        "sampling toward the scenes furthest below their success target; evaluation keeps --level",
    )
    rs_max_dist: float = opt(10.0, "distance to the target [m] below which the Reeds-Shepp hand-off is tried")
    rs_exit_tree: bool = opt(
        False,
        "Parking-v0 with --rs_hybrid (not in HOPE): when no Reeds-Shepp path reaches the goal, try paths to "
        "the slot's exits, unparking manoeuvres searched backwards from the goal once per scene",
    )
    learning_starts: int = opt(2000, "decisions of random actions before the policy acts and updates begin")
    updates_per_step: float = opt(
        1.0, "gradient updates per env step after learning_starts (0.25 = one per 4 steps)"
    )
    seed: int = opt(0, "seed of networks, replay sampling, noise and episode seeds")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    amp: str = opt("off", "mixed precision on CUDA", choices=AMP_MODES)
    eval_interval: int = opt(5000, "decisions between periodic evaluations (0 = none)")
    eval_episodes: int = opt(10, "episodes per periodic evaluation")
    final_eval_episodes: int = opt(
        0,
        "episodes of the evaluation at the end of training, on fresh seeds (from 20000 + seed: neither "
        "training nor the periodic evaluations play them), written to final_eval.json; 0: the final "
        "evaluation is the periodic one at the last step",
    )
    save_interval: int = opt(5000, "decisions between checkpoints (0 = only at the end)")
    log_dir: str = opt("runs", "folder that holds the run folders")
    run_name: str | None = opt(None, "run folder name (default: <algorithm>-<env>-<time>)", parse=str)
    save_buffer: bool = opt(True, "save the replay buffer with each checkpoint (needed for an exact resume)")
    torch_threads: int | None = opt(None, "torch CPU threads (default: torch's choice)", parse=int)
    progress: bool = opt(True, "show a progress bar")
    log_interval: int = opt(
        100, "gradient updates between rows of updates.csv and TensorBoard training scalars"
    )
    # Collection: N local environments (Gymnasium vector env), or Ray workers with their own.
    num_envs: int = opt(
        1,
        "local environments stepped together, one batched policy forward for all; --max_timesteps, "
        "--learning_starts, --updates_per_step and the intervals count decisions summed over all "
        "environments",
    )
    vector_mode: str = opt(
        "sync",
        "sync (environments in this process) or async (one subprocess each, for costly steps)",
        choices=VECTOR_MODES,
    )
    ray_workers: int = opt(
        0,
        "Ray actors collecting experience, each with --envs_per_worker environments and a CPU copy of "
        "the policy (0 = local collection; needs pip install -e '.[ray]')",
    )
    envs_per_worker: int = opt(1, "environments per Ray worker")
    sync_interval: int = opt(50, "gradient updates between weight broadcasts to the Ray workers")
    ray_address: str | None = opt(
        None, "Ray cluster to join (auto or host:port); default: start a local Ray", parse=str
    )
    ray_chunk: int = opt(32, "decisions per environment in each chunk a Ray worker sends")
    worker_timeout_s: float = opt(
        120.0, "a Ray worker whose chunk takes longer is treated as dead and restarted"
    )
    worker_startup_s: float = opt(
        600.0,
        "a Ray worker that takes longer to start (import, connect to its simulator) is treated as dead "
        "and restarted",
    )
    worker_env_kwargs: list[dict[str, Any]] | None = opt(
        None,
        'per-worker environment keywords over --env_kwargs, one JSON object per worker, e.g. \'{"ip": '
        '"10.0.0.2"}\' \'{"ip": "10.0.0.3"}\' (a simulator each)',
        parse="json_list",
    )


@dataclass
class Config:
    """All sections together; field names are unique across sections (they are the CLI flags)."""

    vmamba: VMambaConfig = field(default_factory=VMambaConfig)
    td3: TD3Config = field(default_factory=TD3Config)
    sac: SACConfig = field(default_factory=SACConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def __getattr__(self, name: str) -> Any:
        # Flat access (``cfg.seq_len``) like the design's ``args`` namespace.
        if name.startswith("__"):
            raise AttributeError(name)
        for section in SECTIONS:
            sub = object.__getattribute__(self, section)
            if name in _field_names(type(sub)):
                return getattr(sub, name)
        raise AttributeError(f"Config has no option {name!r}")

    @property
    def total_envs(self) -> int:
        """Environments writing to replay: ``ray_workers * envs_per_worker`` with Ray, else ``num_envs``."""
        tr = self.train
        return tr.ray_workers * tr.envs_per_worker if tr.ray_workers > 0 else tr.num_envs

    def set(self, name: str, value: Any) -> None:
        """Set one option by its flag name."""
        setattr(getattr(self, FLAG_SECTION[name]), name, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict`; unknown keys are an error (a config from another version)."""
        cfg = cls(preset=data.get("preset"))
        for section in SECTIONS:
            for name, value in data.get(section, {}).items():
                name = RENAMED.get(name, name)
                if name not in FLAG_SECTION:
                    raise ConfigError(f"unknown option {name!r} in saved config section {section!r}")
                cfg.set(name, value)
        validate(cfg)
        return cfg


SECTIONS = ("vmamba", "td3", "sac", "train")
# old option names -> new, so configs saved under the old name still load
RENAMED = {"sac_update_every": "sac_target_update_interval"}
_SECTION_TYPES = {"vmamba": VMambaConfig, "td3": TD3Config, "sac": SACConfig, "train": TrainConfig}


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


FLAG_SECTION: dict[str, str] = {
    name: section for section, cls in _SECTION_TYPES.items() for name in _field_names(cls)
}


# The cpu preset's network sizes. VMamba v2's d_state 1 / ratio 1 (as accurate, far faster); patch 8
# puts 8x8 tokens on a 64x64 frame; chosen with benchmarks/encoder.py and benchmarks/train_speed.py on
# the 2-core CPU.
CPU_SIZES: dict[str, Any] = dict(
    vmamba_patch_size=8,
    vmamba_hidden_dim=16,
    vmamba_num_vss_blocks=[1, 1, 1, 1],
    vmamba_ssm_d_state=1,
    vmamba_ssm_ratio=1.0,
    vmamba_mlp_ratio=2.0,
    vmamba_drop_path_rate=0.0,
    vmamba_num_heads=2,
    feature_dim=64,
    state_feature_dim=32,
    hidden_dim=128,
    batch_size=64,
    seq_len=4,
    replay_segment=8,  # ~2x updates/s: runs of 8 windows share frames (benchmarks/train_speed.py)
)

# The small-budget TD3 recipe (docs/results.md, "Findings"): at a few thousand updates the design's
# actor stream, trained only by the policy gradient, collapses to one action for every state. The cpu
# preset carries it; the learning tests reuse it.
SMALL_BUDGET_TD3: dict[str, Any] = dict(
    share_encoder=True,
    critic_norm="state",
    base_skip=True,
    actor_reg=0.1,
    actor_lr=1e-4,
    tau=0.01,
    gamma=0.98,
    n_step=5,
    normalize_base=True,
)

# The drone-navigation recipe (docs/results.md, "VMamba-TD3 on DroneNav easy"): hold each action for 3
# steps, larger OU noise decaying to 0.05, and goals nearer the start (5.5 m, then 9 m per axis) until 60 %
# of the training episodes succeed. The cpu preset carries it; benchmarks/learning.py applies it to the
# project's algorithms.
NAV_RECIPE: dict[str, Any] = dict(
    action_repeat=3,
    ou_sigma=0.3,
    ou_sigma_min=0.05,
    curriculum=[{"goal_wall_margin": 19}, {"goal_wall_margin": 12}],
    curriculum_threshold=0.6,
)


# Presets: the design's three configurations, a CPU preset sized by measurement on a 2-core machine
# (docs/design.md, "Presets"), and HOPE's own SAC hyperparameters.
PRESETS: dict[str, dict[str, Any]] = {
    "light": dict(
        vmamba_hidden_dim=64,
        vmamba_num_vss_blocks=[2, 2, 4, 2],
        feature_dim=128,
        state_feature_dim=128,
        hidden_dim=256,
        batch_size=128,
        seq_len=4,
        max_timesteps=100000,
    ),
    "standard": dict(
        vmamba_hidden_dim=96,
        vmamba_num_vss_blocks=[2, 2, 6, 2],
        feature_dim=256,
        state_feature_dim=256,
        hidden_dim=512,
        batch_size=64,
        seq_len=4,
        max_timesteps=500000,
        actor_lr=3e-4,
        critic_lr=5e-4,
    ),
    "heavy": dict(
        vmamba_hidden_dim=128,
        vmamba_num_vss_blocks=[2, 2, 9, 2],
        feature_dim=512,
        state_feature_dim=512,
        hidden_dim=1024,
        batch_size=32,
        seq_len=8,
        vmamba_temporal_layers=2,
        max_timesteps=1000000,
        actor_lr=1e-4,
        critic_lr=2e-4,
    ),
    # the sizes, the small-budget TD3 recipe, the navigation recipe and a budget that fits 15 minutes on
    # the 2-core machine, scored at the end on 100 fresh episodes of the easy level
    "cpu": dict(
        **CPU_SIZES,
        **SMALL_BUDGET_TD3,
        **NAV_RECIPE,
        max_timesteps=15000,
        learning_starts=1000,
        buffer_size=20000,
        updates_per_step=0.5,
        eval_interval=3000,
        eval_episodes=10,
        final_eval_episodes=100,
        save_interval=3000,
        level="easy",
    ),
    # HOPE's code (reference notes section 6): lr 5e-6, gamma 0.98, batch 32, replay 10240,
    # initial alpha 0.01, target entropy -2, one update per 10 steps after 10240 random steps.
    "hope": dict(
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        sac_actor_lr=5e-6,
        sac_critic_lr=5e-6,
        sac_alpha_lr=5e-6,
        gamma=0.98,
        tau=0.005,
        batch_size=32,
        buffer_size=10240,
        learning_starts=10240,
        sac_init_alpha=0.01,
        sac_target_entropy=-2.0,
        updates_per_step=0.1,
        fusion="attention",
        seq_len=1,
        normalize_keys=["lidar", "target"],
        embed_size=128,
    ),
    # The parking recipe measured on the 2-core machine (docs/results.md, "The slot's exits as hand-off
    # targets": 3 seeds, 61 minutes each, 0.994 / 0.970 / 0.989 on normal / complex / extreme): HOPE's
    # hybrid parts plus the exits, 8 environments, one update per 4 steps, small networks; otherwise the
    # design's SAC defaults (lr 3e-4), not HOPE's 5e-6, which needs 20k+ episodes on a GPU.
    "park": dict(
        algorithm_name="hope_sac",
        env_name="Parking-v0",
        level="normal",
        fusion="mlp",
        modalities=["lidar", "target", "action_mask"],
        env_kwargs={"collision_stops": True, "collision_penalty": 5.0, "max_steps": 100},
        rs_hybrid=True,
        rs_exit_tree=True,
        mask_postprocess=True,
        scene_schedule=True,
        num_envs=8,
        embed_size=64,
        actor_hidden=[128, 128],
        critic_hidden=[128, 128],
        batch_size=128,
        seq_len=1,
        n_step=5,
        gamma=0.98,
        learning_starts=1000,
        updates_per_step=0.25,
        buffer_size=1000000,
        max_timesteps=200000,
        torch_threads=1,
        eval_interval=25000,
        eval_episodes=20,
        save_interval=25000,
    ),
}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"max_steps\": 100}}', got {text!r}"
        ) from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_flag(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    """The flag of one :func:`opt` field."""
    name, meta = f"--{f.name}", f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    helptext = meta["help"]
    if meta["choices"]:
        helptext += f": one of {', '.join(meta['choices'])}"
    helptext += f" (default: {default})"
    parse = meta["parse"]
    if isinstance(default, bool):
        parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
    elif parse == "json":
        parser.add_argument(name, type=_json_object, default=None, help=helptext)
    elif parse == "json_list":
        parser.add_argument(name, nargs="*", type=_json_object, default=None, help=helptext)
    elif parse == "str_list":
        parser.add_argument(name, nargs="+", type=str, default=None, help=helptext)
    elif isinstance(default, list):
        elem = float if default and isinstance(default[0], float) else int
        parser.add_argument(name, nargs="+", type=elem, default=None, help=helptext)
    else:
        parser.add_argument(name, type=parse or type(default), default=None, help=helptext)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every config flag (the design's names) and ``--preset`` to ``parser``."""
    parser.add_argument("--preset", default=None, help="one of " + ", ".join(PRESETS))
    for section, cls in _SECTION_TYPES.items():
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(cls):
            _add_flag(group, f)  # type: ignore[arg-type]


def config_from_namespace(ns: argparse.Namespace) -> Config:
    """Resolve defaults < preset < explicit flags and validate. Raises :class:`ConfigError`."""
    cfg = Config(preset=ns.preset)
    if ns.preset is not None:
        if ns.preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {ns.preset!r}")
        for name, value in PRESETS[ns.preset].items():
            cfg.set(name, list(value) if isinstance(value, list) else value)
    for name in FLAG_SECTION:
        value = getattr(ns, name, None)
        if value is not None:
            cfg.set(name, value)
    validate(cfg)
    return cfg


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse a command line into a :class:`Config` (argparse exits with code 2 on bad values)."""
    parser = argparse.ArgumentParser(prog="vmamba-rl")
    add_config_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(ns)
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def make_config(preset: str | None = None, **overrides: Any) -> Config:
    """Python-side equivalent of ``--preset NAME --flag value ...``."""
    ns = argparse.Namespace(preset=preset, **{k: None for k in FLAG_SECTION})
    for k, v in overrides.items():
        if k not in FLAG_SECTION:
            raise ConfigError(f"unknown option {k!r}")
        setattr(ns, k, v)
    return config_from_namespace(ns)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Check every value; the first bad one raises :class:`ConfigError` naming its flag."""
    for section in (cfg.vmamba, cfg.td3, cfg.sac, cfg.train):
        for f in dataclasses.fields(section):
            choices, value = f.metadata["choices"], getattr(section, f.name)
            if choices is not None:
                _check(value in choices, f"--{f.name} must be one of {', '.join(choices)}, got {value!r}")
    _validate_networks(cfg.vmamba)
    _validate_learning(cfg.td3, cfg.sac)
    _validate_train(cfg)


def _validate_networks(v: VMambaConfig) -> None:
    p = v.vmamba_patch_size
    _check(
        p >= 1 and (p & (p - 1)) == 0, f"--vmamba_patch_size must be a power of 2 (1, 2, 4, 8, 16), got {p}"
    )
    _check(
        len(v.vmamba_num_vss_blocks) == 4,
        f"--vmamba_num_vss_blocks needs 4 values (one per stage), got {len(v.vmamba_num_vss_blocks)}: "
        f"{v.vmamba_num_vss_blocks}",
    )
    _check(
        all(b >= 1 for b in v.vmamba_num_vss_blocks),
        f"--vmamba_num_vss_blocks values must be >= 1, got {v.vmamba_num_vss_blocks}",
    )
    for name in (
        "vmamba_hidden_dim",
        "vmamba_ssm_d_state",
        "vmamba_num_heads",
        "feature_dim",
        "state_feature_dim",
        "hidden_dim",
    ):
        val = getattr(v, name)
        _check(val >= 1, f"--{name} must be >= 1, got {val}")
    _check(
        v.vmamba_temporal_layers >= 0,
        f"--vmamba_temporal_layers must be >= 0, got {v.vmamba_temporal_layers}",
    )
    _check(
        0.0 <= v.vmamba_drop_path_rate < 1.0,
        f"--vmamba_drop_path_rate must be in [0, 1), got {v.vmamba_drop_path_rate}",
    )
    _check(
        v.vmamba_layer_scale_init >= 0,
        f"--vmamba_layer_scale_init must be >= 0, got {v.vmamba_layer_scale_init}",
    )
    for name in ("vmamba_ssm_ratio", "vmamba_mlp_ratio"):
        val = getattr(v, name)
        _check(val > 0 and math.isfinite(val), f"--{name} must be > 0, got {val}")
    _check(
        v.hidden_dim % v.vmamba_num_heads == 0,
        f"--vmamba_num_heads must divide --hidden_dim ({v.hidden_dim}), got {v.vmamba_num_heads}; "
        f"allowed: {[h for h in range(1, v.hidden_dim + 1) if v.hidden_dim % h == 0][:12]}",
    )


def _validate_learning(t: TD3Config, s: SACConfig) -> None:
    for name in ("actor_lr", "critic_lr", "sac_actor_lr", "sac_critic_lr", "sac_alpha_lr"):
        val = getattr(t, name, None) if hasattr(t, name) else getattr(s, name)
        _check(val > 0 and math.isfinite(val), f"--{name} must be a positive learning rate, got {val}")
    _check(0.0 <= t.gamma <= 1.0, f"--gamma must be in [0, 1], got {t.gamma}")
    _check(0.0 < t.tau <= 1.0, f"--tau must be in (0, 1], got {t.tau}")
    _check(t.policy_noise >= 0, f"--policy_noise must be >= 0, got {t.policy_noise}")
    _check(t.noise_clip >= 0, f"--noise_clip must be >= 0, got {t.noise_clip}")
    _check(t.policy_freq >= 1, f"--policy_freq must be >= 1, got {t.policy_freq}")
    _check(
        t.explore_candidates >= 0,
        f"--explore_candidates must be >= 0 uniform actions (0 = off), got {t.explore_candidates}",
    )
    _check(
        t.actor_candidates >= 0,
        f"--actor_candidates must be >= 0 uniform actions (0 = off), got {t.actor_candidates}",
    )
    _check(
        t.actor_candidate_coef >= 0 and math.isfinite(t.actor_candidate_coef),
        f"--actor_candidate_coef must be a finite weight >= 0, got {t.actor_candidate_coef}",
    )
    _check(t.ou_theta >= 0, f"--ou_theta must be >= 0, got {t.ou_theta}")
    _check(
        t.ou_sigma >= 0 and t.ou_sigma_min >= 0,
        f"--ou_sigma and --ou_sigma_min must be >= 0, got {t.ou_sigma} and {t.ou_sigma_min}",
    )
    _check(
        t.ou_sigma_min <= t.ou_sigma,
        f"--ou_sigma_min ({t.ou_sigma_min}) must be <= --ou_sigma ({t.ou_sigma})",
    )
    _check(t.grad_clip > 0, f"--grad_clip must be > 0, got {t.grad_clip}")
    _check(t.actor_reg >= 0, f"--actor_reg must be >= 0, got {t.actor_reg}")
    _check(
        t.encoder_lr is None or (t.encoder_lr > 0 and math.isfinite(t.encoder_lr)),
        f"--encoder_lr must be a positive learning rate, got {t.encoder_lr}",
    )
    _check(t.augment_shift >= 0, f"--augment_shift must be >= 0 pixels (0 = off), got {t.augment_shift}")
    _check(
        len(t.cnn_channels) >= 1 and all(c >= 1 for c in t.cnn_channels),
        f"--cnn_channels must be positive channel counts, got {t.cnn_channels}",
    )
    _check(
        s.modalities is None or len(s.modalities) >= 1,
        "--modalities needs at least one observation key",
    )
    _check(s.sac_init_alpha > 0, f"--sac_init_alpha must be > 0, got {s.sac_init_alpha}")
    _check(s.embed_size >= 1, f"--embed_size must be >= 1, got {s.embed_size}")
    _check(
        s.attention_heads >= 1 and s.attention_dim_head >= 1 and s.attention_depth >= 1,
        "--attention_heads, --attention_dim_head and --attention_depth must be >= 1",
    )


def _validate_train(cfg: Config) -> None:
    tr = cfg.train
    _check(tr.seq_len >= 1, f"--seq_len must be >= 1, got {tr.seq_len}")
    _check(tr.batch_size >= 1, f"--batch_size must be >= 1, got {tr.batch_size}")
    _check(tr.n_step >= 1, f"--n_step must be >= 1, got {tr.n_step}")
    _check(
        0.0 < tr.curriculum_threshold <= 1.0,
        f"--curriculum_threshold must be in (0, 1], got {tr.curriculum_threshold}",
    )
    _check(tr.curriculum_window >= 1, f"--curriculum_window must be >= 1, got {tr.curriculum_window}")
    _check(
        tr.trap_check == 0 or tr.trap_check > tr.learning_starts,
        f"--trap_check must be 0 (off) or more than --learning_starts ({tr.learning_starts}) decisions, "
        f"got {tr.trap_check}",
    )
    _check(tr.trap_min_length > 0, f"--trap_min_length must be > 0 decisions, got {tr.trap_min_length}")
    _check(
        0.0 <= tr.trap_max_success <= 1.0,
        f"--trap_max_success must be a success rate in [0, 1], got {tr.trap_max_success}",
    )
    _check(tr.trap_restarts >= 0, f"--trap_restarts must be >= 0, got {tr.trap_restarts}")
    _check(
        tr.trap_candidates >= -1,
        f"--trap_candidates must be -1 (keep --explore_candidates) or >= 0 uniform actions, "
        f"got {tr.trap_candidates}",
    )
    _check(tr.action_repeat >= 1, f"--action_repeat must be >= 1, got {tr.action_repeat}")
    _check(
        tr.rs_max_dist > 0 and math.isfinite(tr.rs_max_dist),
        f"--rs_max_dist must be a finite distance > 0 m, got {tr.rs_max_dist}",
    )
    _check(
        not tr.rs_hybrid or tr.env_name == "Parking-v0",
        f"--rs_hybrid plans Reeds-Shepp paths for Parking-v0 only; --env_name is {tr.env_name!r}",
    )
    _check(
        not tr.scene_schedule or tr.env_name == "Parking-v0",
        f"--scene_schedule picks Parking-v0 scenes only; --env_name is {tr.env_name!r}",
    )
    _check(
        not tr.rs_exit_tree or tr.rs_hybrid,
        "--rs_exit_tree is on but --rs_hybrid is off: the exits extend the Reeds-Shepp hand-off; "
        "add --rs_hybrid or drop --rs_exit_tree",
    )
    _check(
        not tr.rs_hybrid or tr.action_repeat == 1,
        f"--rs_hybrid drives planned actions one step each; use --action_repeat 1 (got {tr.action_repeat})",
    )
    _check(tr.replay_segment >= 1, f"--replay_segment must be >= 1, got {tr.replay_segment}")
    _check(
        tr.buffer_size > tr.seq_len + 1,
        f"--buffer_size must exceed --seq_len + 1 ({tr.seq_len + 1}), got {tr.buffer_size}",
    )
    _check(tr.max_timesteps >= 1, f"--max_timesteps must be >= 1, got {tr.max_timesteps}")
    _check(tr.learning_starts >= 0, f"--learning_starts must be >= 0, got {tr.learning_starts}")
    _check(tr.updates_per_step >= 0, f"--updates_per_step must be >= 0, got {tr.updates_per_step}")
    _check(
        tr.eval_interval >= 0
        and tr.eval_episodes >= 0
        and tr.save_interval >= 0
        and tr.final_eval_episodes >= 0,
        "--eval_interval, --eval_episodes, --final_eval_episodes and --save_interval must be >= 0",
    )
    _check(
        tr.device == "auto" or tr.device.startswith(("cpu", "cuda", "mps")),
        f"--device must be auto, cpu, cuda or cuda:N, got {tr.device!r}",
    )
    _check(
        tr.torch_threads is None or tr.torch_threads >= 1,
        f"--torch_threads must be >= 1, got {tr.torch_threads}",
    )
    _check(tr.log_interval >= 1, f"--log_interval must be >= 1, got {tr.log_interval}")
    _check(tr.num_envs >= 1, f"--num_envs must be >= 1, got {tr.num_envs}")
    _check(tr.ray_workers >= 0, f"--ray_workers must be >= 0, got {tr.ray_workers}")
    _check(tr.envs_per_worker >= 1, f"--envs_per_worker must be >= 1, got {tr.envs_per_worker}")
    _check(tr.sync_interval >= 1, f"--sync_interval must be >= 1, got {tr.sync_interval}")
    _check(tr.ray_chunk >= 1, f"--ray_chunk must be >= 1, got {tr.ray_chunk}")
    _check(tr.worker_timeout_s > 0, f"--worker_timeout_s must be > 0, got {tr.worker_timeout_s}")
    _check(tr.worker_startup_s > 0, f"--worker_startup_s must be > 0, got {tr.worker_startup_s}")
    _check(
        tr.ray_workers == 0 or tr.num_envs == 1,
        f"--num_envs {tr.num_envs} is for local collection; with --ray_workers use --envs_per_worker",
    )
    _check(
        tr.worker_env_kwargs is None or len(tr.worker_env_kwargs) == tr.ray_workers,
        f"--worker_env_kwargs needs one JSON object per Ray worker ({tr.ray_workers}), "
        f"got {len(tr.worker_env_kwargs or [])}",
    )
    _check(
        tr.buffer_size // cfg.total_envs > tr.seq_len + 1,
        f"--buffer_size {tr.buffer_size} split over {cfg.total_envs} environments leaves "
        f"{tr.buffer_size // cfg.total_envs} slots each; each needs more than --seq_len + 1 "
        f"({tr.seq_len + 1})",
    )
