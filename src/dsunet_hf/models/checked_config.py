"""Checks shared by the model configs, and keyword overrides of ``from_pretrained`` checked like the config file's
values."""

from __future__ import annotations

import inspect
import math


def check_positive_int(name: str, value) -> None:
    """Refuse what would otherwise fail later as an opaque tensor-shape error (a float, a string, 0 or less)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_finite_number(name: str, value) -> float:
    """A real number, not NaN / inf (a NaN threshold compares False everywhere: empty masks, silently). NumPy and
    0-d tensor numbers (a threshold computed from scores) count as numbers, as ``float()`` takes them."""
    try:
        number = float(value)
    except (TypeError, ValueError):  # 'abc', None, a list
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_loss_weights(weights, order: str) -> list[float]:
    """Three finite, non-negative numbers, not all zero (a negative weight would train that output away from the
    labels, all zeros would train nothing)."""
    numbers = isinstance(weights, (list, tuple)) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights
    )
    if not numbers or len(weights) != 3 or not any(weights):
        raise ValueError(f"loss_weights needs 3 non-negative numbers, not all 0 ({order}), got {weights!r}")
    return [float(w) for w in weights]


class CheckedOverrides:
    """A config mixin: transformers builds a config from its file, then sets ``from_pretrained(..., field=value)``
    overrides with ``setattr``, past ``__init__``'s checks (``from_pretrained(repo, fusion_reduction=1000)`` built a
    model that failed later with an IndexError). Overrides of the config's own arguments go to ``__init__`` instead."""

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        return super().from_dict({**config_dict, **overrides}, **kwargs)
