"""The configuration of a training run, as plain dataclasses: what a checkpoint records
(``adamix_config.json``), what the quickstart and the benchmarks pass. Reading a checkpoint's config imports
this module only, not torch.

The dataclasses own every default; `train_options` is the one way from what a user chose to a `TrainOptions`:
the recipe's values for what they left out, then those defaults. `adamix-train` calls it with the options typed
on the command line, so the CLI and the Python API build equal options from equal choices.

Validation happens once, here, when a config is built (and in the CLI's option types); the modules built
from a config trust it.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from adamix_deploy.contracts.errors import AdamixError
from adamix_deploy.contracts.tasks import DEFAULT_PROMPT_TEMPLATE, TASKS
from adamix_deploy.routing import Routing
from adamix_deploy.selection import SELECTION_METRICS

SHARE_CHOICES = ("up", "down", "none")
METHODS = ("adapter", "lora", "head")
PLACEMENTS = ("ffn", "ffn+attn")
INITS = ("official", "kaiming-zero-up")  # see adapter.py and lora.py for what each draws


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
    init: str = "official"  # official | kaiming-zero-up (independent kaiming draws, up side zero)
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
        if self.init not in INITS:
            raise AdamixError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MixtureSpec:
        return cls(**data)


# From the SST-2 tuning of benchmarks/adamix_quality/sst2.py (MiniLM-L6, 1,000 training sentences, batch 32, validation
# set only; docs/benchmarks/adamix-quality.md): lr 3e-3 won over 1e-3 for the single module, its consistency control and
# AdaMix, adapters and LoRA alike; the single modules peaked at 3 epochs (of 3 and 8), and AdaMix at twice its
# single module's epochs beat AdaMix at the same budget on validation (the paper: AdaMix needs 1-2x).
DEFAULT_LR = {"adapter": 3e-3, "lora": 3e-3, "head": 2e-2}
SINGLE_MODULE_EPOCHS = 3
MIXTURE_EPOCH_FACTOR = 2


def default_epochs(experts: int) -> int:
    """Epochs when the user gives none: a mixture trains twice as long as one module (the tuning above)."""
    return SINGLE_MODULE_EPOCHS * (MIXTURE_EPOCH_FACTOR if experts > 1 else 1)


# The paper's settings in one word: what the official scripts set besides the learning rate, the epochs and
# the batch (those depend on the model and the data size; see docs/benchmarks/adamix-quality.md). Sources, in
# microsoft/AdaMix: NLU `examples/text-classification/roberta_large_mnli_expert_soup.sh` and
# `bert_base_mnli_expert_soup.sh` (4 experts, adapter size 16, --sharing_up 1, weight decay 0.1, warm-up 6 %,
# consistency loss weight 1, the classifier head's dense layer trained); NLG `NLG/run_train_e2e.sh` (8 experts,
# r 4, alpha 32, LoRA dropout 0.1, label smoothing 0.1, --share_B 1, weight decay 0.01, consistency x 100,
# warm-up 2000 of ~105k steps). The official repository has no NLU LoRA script: `nlu-lora` is the NLG LoRA
# module (identical A copies, shared B) with the NLU training settings and the LoRA paper's r 8 / alpha 16.
# Keys are field names of TrainOptions or MixtureSpec.
RECIPES: dict[str, dict[str, object]] = {
    "nlu-adapter": {
        "experts": 4, "share": "up", "bottleneck": 16, "init": "official", "consistency_weight": 1.0,
        "weight_decay": 0.1, "warmup_ratio": 0.06, "train_pooler": True,
    },
    "nlu-lora": {
        "experts": 4, "share": "up", "rank": 8, "alpha": 16.0, "init": "official", "consistency_weight": 1.0,
        "weight_decay": 0.1, "warmup_ratio": 0.06, "train_pooler": True,
    },
    "nlg-lora": {
        "experts": 8, "share": "up", "rank": 4, "alpha": 32.0, "lora_dropout": 0.1, "init": "official",
        "consistency_weight": 100.0, "weight_decay": 0.01, "warmup_ratio": 0.02, "label_smoothing": 0.1,
    },
}  # fmt: skip


RECIPE_CHOICES = ("auto", "none", *RECIPES)


def default_recipe(task: str, method: str) -> str | None:
    """The recipe ``auto`` picks: the official setting of that task family and method, if any."""
    family = "nlg" if task == "generation" else "nlu"
    name = f"{family}-{method}"
    return name if name in RECIPES else None


@dataclass
class TrainOptions:
    model: str
    task: str
    train_file: str
    output: str
    eval_file: str | None = None
    mixture: MixtureSpec = field(default_factory=MixtureSpec)
    recipe: str = "none"  # the recipe `train_options` applied (a record: building TrainOptions applies none)
    consistency_weight: float = 1.0
    epochs: int | None = None  # None: default_epochs of the mixture
    batch_size: int = 16
    lr: float | None = None  # None: DEFAULT_LR of the method
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 42
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None  # None: "label", or for regression "label" or "score" (GLUE's STS-B)
    prompt_column: str | None = None
    target_column: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    header: bool = True  # False: the files have no header row; column options are positions (0, 1, ...)
    label_smoothing: float = 0.0  # generation's task loss (0.1 in the official E2E runs)
    train_pooler: bool = False  # also train the pooler's dense layer with the head, where the model has one
    freeze_head: bool = False  # keep a task head the model folder already has (and that fits) frozen
    device: str | None = None  # torch device to train on; None: cuda when available, else cpu
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_routing: str = "average"
    generate_eval: int = 0  # generation: decode this many eval inputs at the end for BLEU / ROUGE-L
    max_new_tokens: int = 64
    save_every: int = 0  # also checkpoint every N steps (0: at the end of each epoch only)
    eval_every: int = 0  # evaluate every N steps and at the last one (0: at the end of each epoch)
    select_best: str | None = None  # keep the weights of the best evaluation by this metric (selection.py)
    stop_after: int | None = None  # save and stop after N steps in this invocation (continue with --resume)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = default_epochs(self.mixture.experts)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.mixture.method]
        if self.recipe not in RECIPES and self.recipe != "none":
            raise AdamixError(f"recipe must be one of none, {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.task not in TASKS:
            raise AdamixError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task != "generation" and self.label_smoothing:
            raise AdamixError("label smoothing applies to generation only")
        if not 0 <= self.label_smoothing < 1:
            raise AdamixError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.task == "generation" and self.train_pooler:
            raise AdamixError(
                "--train-pooler applies to classification and regression (a language model has no pooler)"
            )
        if self.task == "generation" and self.freeze_head:
            raise AdamixError(
                "--freeze-head applies to classification and regression (a language model has no head)"
            )
        if not self.header:
            for name in ("text_column", "pair_column", "label_column"):
                value = getattr(self, name)
                if value is not None and not value.isdigit():
                    raise AdamixError(
                        f"without a header, --{name.replace('_', '-')} is a column position (0, 1, ...), got {value!r}"
                    )
            if self.text_column is None or self.label_column is None:
                raise AdamixError("without a header, give --text-column and --label-column as positions")
        if self.task == "generation" and self.mixture.method == "head":
            raise AdamixError(
                "method head trains nothing for generation (a language model has no new head): use lora or adapter"
            )
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise AdamixError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise AdamixError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise AdamixError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.consistency_weight < 0:
            raise AdamixError(f"consistency weight must be >= 0, got {self.consistency_weight}")
        if "{prompt}" not in self.prompt_template:
            raise AdamixError("prompt template must contain {prompt}")
        Routing.parse(self.eval_routing)
        self._check_selection()

    def _check_selection(self) -> None:
        if self.eval_every < 0:
            raise AdamixError(f"eval every must be >= 0, got {self.eval_every}")
        if self.eval_every and not self.eval_file:
            raise AdamixError("--eval-every needs --eval-file (the set it evaluates)")
        if self.select_best is None:
            return
        metric = SELECTION_METRICS.get(self.select_best)
        if metric is None:
            raise AdamixError(
                f"select best must be one of {', '.join(SELECTION_METRICS)}, got {self.select_best!r}"
            )
        if self.task not in metric.keys:
            usable = [name for name, m in SELECTION_METRICS.items() if self.task in m.keys]
            raise AdamixError(f"--select-best {self.select_best} does not apply to {self.task} (use one of "
                              f"{', '.join(usable)})")  # fmt: skip
        if not self.eval_file:
            raise AdamixError("--select-best needs --eval-file (the set the checkpoint is chosen on)")
        if metric.decoded and not self.generate_eval:
            raise AdamixError(f"--select-best {self.select_best} decodes eval inputs at every evaluation: give "
                              "--generate-eval N (how many)")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    def data_columns(self) -> dict:
        """How this run reads a labelled file: what `adamix-eval` and the export's parity reuse."""
        return {
            "text_column": self.text_column,
            "pair_column": self.pair_column,
            "label_column": self.label_column,
            "header": self.header,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrainOptions:
        return cls(**{**data, "mixture": MixtureSpec.from_dict(data["mixture"])})


_MIXTURE_FIELDS = {f.name for f in fields(MixtureSpec)} - {"modules"}
_OPTION_FIELDS = {f.name for f in fields(TrainOptions)} - {"mixture", "recipe"}


def field_default(name: str) -> object:
    """The default of a TrainOptions or MixtureSpec field (what ``--help`` shows): the dataclasses own them."""
    for cls in (TrainOptions, MixtureSpec):
        for f in fields(cls):
            if f.name == name:
                return f.default_factory() if f.default is MISSING else f.default
    raise KeyError(name)


def train_options(recipe: str = "auto", **chosen: object) -> TrainOptions:
    """TrainOptions from what a user chose, for `adamix-train` and the Python API alike. ``chosen`` holds
    TrainOptions and MixtureSpec fields by name (``model``, ``task``, ``method``, ``experts``, ``lr`` ...),
    only those the user set; ``recipe`` (``auto``: by task and method; ``none``; or a name in RECIPES) gives
    its value for every field not chosen; the dataclasses' defaults fill the rest."""
    if recipe not in RECIPE_CHOICES:
        raise AdamixError(f"recipe must be one of {', '.join(RECIPE_CHOICES)}, got {recipe!r}")
    unknown = sorted(set(chosen) - _MIXTURE_FIELDS - _OPTION_FIELDS)
    if unknown:
        raise AdamixError(f"unknown training option {unknown[0]!r}")
    method = str(chosen.get("method", field_default("method")))
    if recipe == "auto":
        task = str(chosen.get("task", "classification"))
        recipe = (default_recipe(task, method) if method != "head" else None) or "none"
    values = {**(RECIPES[recipe] if recipe != "none" else {}), **chosen}
    spec = MixtureSpec(**{k: v for k, v in values.items() if k in _MIXTURE_FIELDS})
    return TrainOptions(mixture=spec, recipe=recipe, **{k: v for k, v in values.items() if k in _OPTION_FIELDS})
