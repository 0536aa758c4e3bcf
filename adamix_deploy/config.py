"""The configuration of a training run, as plain dataclasses: what the CLI builds, what a checkpoint records
(``adamix_config.json``), what the quickstart and the benchmarks pass. Reading a checkpoint's config imports
this module only, not torch.

Validation happens once, here, when a config is built (and in the CLI's option types); the modules built
from a config trust it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from adamix_deploy.errors import AdamixError
from adamix_deploy.exporters.export_folder import DEFAULT_PROMPT_TEMPLATE, TASKS
from adamix_deploy.routing import Routing

SHARE_CHOICES = ("up", "down", "none")
METHODS = ("adapter", "lora", "head")
PLACEMENTS = ("ffn", "ffn+attn")


@dataclass
class MixtureSpec:
    """Everything needed to rebuild the mixture modules of a checkpoint on its base model."""

    method: str = "adapter"  # adapter | lora | head (no mixture: only the task head trains)
    experts: int = 4
    share: str = "up"  # up | down | none; for LoRA, "down" is A and "up" is B
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator: scaling = alpha / rank
    lora_dropout: float = 0.0
    bottleneck: int = 16  # adapter width
    activation: str = "gelu"
    placement: str = "ffn"  # adapter positions: ffn | ffn+attn
    targets: list[str] | None = None  # module-name patterns overriding the family defaults
    modules: list[str] = field(default_factory=list)  # filled by inject_mixture: the names wrapped

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdamixError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.experts < 1:
            raise AdamixError(f"experts must be >= 1, got {self.experts}")
        if self.share not in SHARE_CHOICES:
            raise AdamixError(f"share must be one of {', '.join(SHARE_CHOICES)}, got {self.share!r}")
        if self.method == "lora" and self.rank <= 0:
            raise AdamixError(f"rank must be > 0, got {self.rank}")
        if self.method == "adapter" and self.bottleneck <= 0:
            raise AdamixError(f"bottleneck must be > 0, got {self.bottleneck}")
        if self.placement not in PLACEMENTS:
            raise AdamixError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if not 0 <= self.lora_dropout < 1:
            raise AdamixError(f"lora dropout must be in [0, 1), got {self.lora_dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MixtureSpec:
        return cls(**data)


# Measured on MiniLM-L6 / SST-2 (1,000 examples, 3 epochs): 1e-3 underfits in short runs, 3e-3 does not.
DEFAULT_LR = {"adapter": 3e-3, "lora": 3e-3, "head": 2e-2}


@dataclass
class TrainOptions:
    model: str
    task: str
    train_file: str
    output: str
    eval_file: str | None = None
    mixture: MixtureSpec = field(default_factory=MixtureSpec)
    consistency_weight: float = 1.0
    epochs: int = 3
    batch_size: int = 16
    lr: float | None = None  # None: DEFAULT_LR of the method
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 42
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str = "label"
    prompt_column: str | None = None
    target_column: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_routing: str = "average"
    generate_eval: int = 0  # generation: decode this many eval inputs at the end for BLEU / ROUGE-L
    max_new_tokens: int = 64
    save_every: int = 0  # also checkpoint every N steps (0: at the end of each epoch only)
    stop_after: int | None = None  # save and stop after N steps in this invocation (continue with --resume)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise AdamixError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "generation" and self.mixture.method == "head":
            raise AdamixError(
                "method head trains nothing for generation (a language model has no new head): use lora or adapter"
            )
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise AdamixError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise AdamixError(f"lr must be > 0, got {self.lr}")
        if self.consistency_weight < 0:
            raise AdamixError(f"consistency weight must be >= 0, got {self.consistency_weight}")
        if "{prompt}" not in self.prompt_template:
            raise AdamixError("prompt template must contain {prompt}")
        Routing.parse(self.eval_routing)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainOptions:
        return cls(**{**data, "mixture": MixtureSpec.from_dict(data["mixture"])})
