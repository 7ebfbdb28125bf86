"""Configuration of stage 3: [`MirageGRPOConfig`], a `trl.GRPOConfig` with `latent_*` fields and the paper's defaults.

Stage 3 of Mirage is GRPO with reward `0.9 * accuracy + 0.1 * format`, a KL penalty on text tokens only, learning rate
1e-6 and 5 rollouts per prompt (the official RL code was never released). TRL's own defaults differ (`beta=0.0`,
`loss_type="dapo"`); the defaults here follow the paper, and where it is silent the choice is explained next to the
field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .config import MirageRuntimeDefaults
from .rewards import DEFAULT_REWARD_WEIGHTS, DEFAULT_REWARDS

LATENT_RESCORING = ("chain", "replay")


@dataclass
class MirageGRPOConfig(MirageRuntimeDefaults, GRPOConfig):
    r"""
    Configuration class for [`MirageGRPOTrainer`]: every field of `trl.GRPOConfig`, plus the Mirage fields below.

    Parameters:
        latent_rescoring (`str`, defaults to `"chain"`):
            How the policy scores a rollout after generation. `"chain"`: the forward feeds every latent pad the policy's
            own hidden state (the self-fed chain), so a completion's probability is its text tokens' probabilities
            with the latents recomputed by the current parameters, and the gradient also flows through the latents.
            `"replay"`: the rollout's recorded latents are teacher-forced as constants: the same values before the
            first update, one ordinary forward instead of a chain, but no gradient through the latents. The reference
            model always scores with its own chain.
        latent_num_tokens (`int` or `None`, defaults to `None`):
            k, the pads per latent block, chosen when a Qwen2.5-VL checkpoint is converted (None: 4). A Mirage
            checkpoint keeps its own k (None: accept it; another value is an error), as in `MirageSFTConfig`.
        image_scale (`float` or `None`, defaults to `None`):
            The processor's image resize factor, set when a Qwen2.5-VL checkpoint is converted and saved with the
            processor; a Mirage checkpoint's processor keeps its own (None: accept it; another value is an error).
        latent_freeze_vision (`bool`, defaults to `True`):
            Freeze the vision tower (patch merger included), as the SFT stages do.
        reward_funcs (`list[str]`, defaults to `["accuracy", "format"]`):
            Rewards by name (see `trainers.rewards.REWARDS`), used when the trainer is given no reward functions.
    """

    latent_rescoring: str = field(
        default="chain",
        metadata={
            "help": "How the policy rescores rollouts. 'chain' (exact, default): the loss forward recomputes every "
            "latent with the current parameters, so the gradient also flows through the latents. 'replay' "
            "(cheaper): the rollout's recorded latents are fed as constants; same values before the first update, "
            "no gradient through the latents. The reference model always uses its own chain.",
            "choices": list(LATENT_RESCORING),
        },
    )
    latent_freeze_vision: bool = field(
        default=True,
        metadata={
            "help": "Freeze the vision tower, patch merger included. The paper trains the language model only in the "
            "SFT stages and says nothing for RL; frozen, the image features stay those the latents were trained "
            "against, and the loss backward skips the tower."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={
            "help": "Rewards by name (trainers.rewards.REWARDS: accuracy, planning_success, choice_accuracy, format), "
            "used when the trainer is given no reward functions. Weighted by reward_weights."
        },
    )

    # Defaults that differ from GRPOConfig.
    reward_weights: list[float] | None = field(
        default_factory=lambda: list(DEFAULT_REWARD_WEIGHTS),
        metadata={"help": "Weights of reward_funcs; the paper's reward is 0.9 x accuracy + 0.1 x format."},
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Initial learning rate (the paper's RL 1e-6)."})
    num_generations: int | None = field(default=5, metadata={"help": "Rollouts per prompt (the paper's 5)."})
    per_device_train_batch_size: int = field(
        default=5,
        metadata={
            "help": "Rollouts per device and step. The generation batch (this x processes x steps_per_generation) "
            "must hold whole groups of num_generations rollouts, so the default is one group."
        },
    )
    beta: float = field(
        default=0.01,
        metadata={
            "help": "KL coefficient against the reference model, on text tokens only (the paper's 0.01; TRL's "
            "default is 0.0)."
        },
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "Policy loss aggregation. The paper says GRPO and nothing more; 'grpo' (each sequence's mean "
            "over its text tokens, then the mean over sequences) is that objective as published, where TRL's "
            "default 'dapo' weights sequences by length."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Disable dropout (on by default here): rollouts are generated in training mode, and the rescoring "
            "must see the same function as the rollout for the old-policy probabilities to be exact."
        },
    )
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={
            "help": "Must stay False: the rewards read dataset columns (task, variant, answer, map_desc) that the "
            "model's forward does not name."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.latent_rescoring not in LATENT_RESCORING:
            raise ValueError(f"latent_rescoring must be one of {LATENT_RESCORING}, got {self.latent_rescoring!r}")
        if self.remove_unused_columns:
            raise ValueError(
                "MirageGRPOConfig needs remove_unused_columns=False: the rewards read dataset columns (task, variant, "
                "answer, map_desc) that Trainer would otherwise drop"
            )
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
