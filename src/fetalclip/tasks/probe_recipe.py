"""One recipe for every linear probe: how heads are trained (optimiser, epochs, batches) and repeated (folds, runs).

The linear probe, the few-shot curve and the clip probe all train the same thing, a linear layer on frozen
embeddings with AdamW and best-validation-loss epoch selection, so they share one frozen dataclass instead of
each taking a dozen differently ordered keywords. It is checked where it is made: a bad value (``epochs=0``, a
negative or NaN learning rate) is one ``RecipeError`` naming the field, before any image is encoded. What is
not training (the seed, the bootstrap size, a few-shot curve's sizes, the clip task's positive class) stays a
keyword of the runner.

The defaults are the published probe protocol: AdamW lr 3e-4, weight decay 0.01, batch 64, at most 50 epochs,
5 folds x 5 runs, raw (not standardised) embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import FetalCLIPError


class RecipeError(FetalCLIPError):
    """A probe recipe field with a value it cannot take; ``field``, ``value`` and ``rule`` say which and why."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"probe recipe: {field} = {value!r} {rule}")


def _whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(name, value, f"must be a whole number >= {low}")


def _rate(name: str, value: Any, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise RecipeError(name, value, "must be a finite number >= 0" if allow_zero else "must be a positive, finite number")


@dataclass(frozen=True)
class ProbeRecipe:
    """How a probe trains its linear heads and how often it repeats them."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    grid: tuple[tuple[float, float], ...] = ()  # (lr, weight decay) points trained together; () = ((lr, weight_decay),)
    epochs: int = 50  # at most; each head keeps its best-validation-loss epoch
    batch_size: int = 64
    folds: int = 5  # patient-level folds (1: one seeded 20% validation hold-out); few-shot draws its own
    runs: int = 5  # head seeds per fold (or per few-shot support set)
    standardize: bool = False  # z-score features on the training rows, folded back into the head's weights
    test_fraction: float = 0.2  # seeded patient test hold-out when the data has no test split of its own

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(tuple(point) for point in self.grid))
        _rate("lr", self.lr, allow_zero=False)
        _rate("weight_decay", self.weight_decay, allow_zero=True)
        for point in self.grid:
            if len(point) != 2:
                raise RecipeError("grid", point, "must be (lr, weight_decay) pairs")
            _rate("grid lr", point[0], allow_zero=False)
            _rate("grid weight_decay", point[1], allow_zero=True)
        _whole("epochs", self.epochs, 1)
        _whole("batch_size", self.batch_size, 1)
        _whole("folds", self.folds, 1)
        _whole("runs", self.runs, 1)
        if not isinstance(self.standardize, bool):
            raise RecipeError("standardize", self.standardize, "must be true or false")
        if not (isinstance(self.test_fraction, (int, float)) and 0 <= self.test_fraction < 1):
            raise RecipeError("test_fraction", self.test_fraction, "must be in [0, 1)")

    @property
    def points(self) -> tuple[tuple[float, float], ...]:
        """The (lr, weight decay) points heads are trained at: the grid, else the one (lr, weight_decay)."""
        return self.grid or ((self.lr, self.weight_decay),)

    def single_point(self, who: str) -> tuple[float, float]:
        """The one (lr, weight decay) of a runner that trains no grid; a grid of several points is an error."""
        if len(self.points) != 1:
            raise RecipeError("grid", self.grid, f"has {len(self.points)} points; the {who} trains one (lr, weight_decay)")
        return self.points[0]

    def updated(self, **changes: Any) -> "ProbeRecipe":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ProbeRecipe":
        """The recipe fields of ``values`` (a task's options, say); other keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["grid"] = [list(point) for point in self.grid]
        return out


__all__ = ["ProbeRecipe", "RecipeError"]
