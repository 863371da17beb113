"""Which validation makes the best checkpoint: the task's own metric (config.SELECTION), or the
one --select-by names, compared in that metric's direction."""

from __future__ import annotations

from dataclasses import dataclass

from .config import SELECTION, check_select_by


@dataclass(frozen=True)
class Selection:
    """The metric that chooses best.safetensors and whether higher or lower is better."""

    metric: str  # a key of the task's evaluate() results, e.g. "accuracy"
    direction: str  # "max" or "min"

    @classmethod
    def of(cls, task: str, select_by: str | None) -> "Selection":
        """The selection of ``task`` (its own metric when ``select_by`` is None); UserError for
        a metric the task does not report."""
        metric = check_select_by(task, select_by)
        return cls(metric, SELECTION[task][metric])

    def improves(self, metrics: dict, best: dict) -> bool:
        """Whether ``metrics`` (one validation) beat ``best`` (the best so far, {} at first).
        Ties keep the earlier checkpoint."""
        if self.metric not in best:
            return True
        new, old = metrics[self.metric], best[self.metric]
        return new > old if self.direction == "max" else new < old

    def describe(self, best: dict) -> str:
        """"accuracy 0.7620 at step 500" for the best record (with its "step")."""
        value = best.get(self.metric, float("nan"))
        return f"{self.metric} {value:.4f} at step {best.get('step')}"
