"""Best-checkpoint selection (``adamix-train --select-best METRIC``), as the Hugging Face Trainer's
``load_best_model_at_end`` / ``metric_for_best_model`` and the official AdaMix GLUE scripts do it: the run is
evaluated on the eval file after every epoch (or every ``--eval-every`` steps), the trainable weights of the best
evaluation so far are kept, and the finished checkpoint holds those weights, with the step, epoch and score they
came from in its training record.

Picking the checkpoint on a set is a choice made on that set: a score on the same set is optimistic
(docs/benchmarks/adamix-quality.md measures by how much). Select on a validation split, report on another.

No torch here: `config.py` validates the choice with this table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SelectionMetric:
    keys: dict[str, str]  # task -> the key of this metric in that task's evaluation
    higher_is_better: bool
    decoded: bool = False  # generation scores: the eval inputs are decoded at every evaluation


SELECTION_METRICS = {
    "accuracy": SelectionMetric({"classification": "accuracy"}, True),
    "f1": SelectionMetric({"classification": "f1_macro"}, True),
    "mcc": SelectionMetric({"classification": "mcc"}, True),
    "pearson": SelectionMetric({"regression": "pearson"}, True),
    "spearman": SelectionMetric({"regression": "spearman"}, True),
    "loss": SelectionMetric({"classification": "loss", "regression": "mse", "generation": "loss"}, False),
    "bleu": SelectionMetric({"generation": "bleu"}, True, decoded=True),
    "rouge_l": SelectionMetric({"generation": "rouge_l"}, True, decoded=True),
}


def improves(score: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether ``score`` beats the best so far (strictly: a tie keeps the earlier one; None: nothing yet)."""
    return best is None or (score > best if higher_is_better else score < best)


@dataclass
class Selection:
    """The best evaluation so far of one run (JSON in the checkpoint; its weights are kept by the loop)."""

    metric: str
    task: str
    step: int | None = None
    epoch: float | None = None
    score: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return SELECTION_METRICS[self.metric].higher_is_better

    def offer(self, step: int, epoch: float, metrics: dict) -> bool:
        """Keep this evaluation if it beats the best so far (strictly: a tie keeps the earlier one); True if so."""
        score = float(metrics[SELECTION_METRICS[self.metric].keys[self.task]])
        if not improves(score, self.score, self.higher_is_better):
            return False
        self.step, self.epoch, self.score = step, epoch, score
        return True

    def to_dict(self) -> dict:
        return {**asdict(self), "higher_is_better": self.higher_is_better}

    @classmethod
    def from_dict(cls, data: dict) -> Selection:
        return cls(data["metric"], data["task"], data["step"], data["epoch"], data["score"])
