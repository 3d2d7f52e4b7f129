"""Checks shared by the model configs, and keyword overrides of ``from_pretrained`` checked like the config file's
values."""

from __future__ import annotations

import difflib
import inspect
import math
import numbers

import numpy as np


def check_positive_int(name: str, value) -> None:
    """Refuse what would otherwise fail later as an opaque tensor-shape error (a float, a string, 0 or less)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive_int(name: str, value) -> int:
    """``value`` as a Python int: a call argument (a batch size) may be a NumPy integer, which range() and slicing
    take but torch's DataLoader refuses; config fields stay strict (check_positive_int: a stored np.int64 is
    unwritable JSON)."""
    if isinstance(value, np.integer):
        value = int(value)
    check_positive_int(name, value)
    return value


def check_finite_number(name: str, value) -> float:
    """A real number, not NaN / inf (a NaN threshold compares False everywhere: empty masks, silently). NumPy and
    0-d tensor numbers (a threshold computed from scores) count as numbers, as ``float()`` takes them."""
    try:
        number = float(value)
    except (TypeError, ValueError):  # 'abc', None, a list
        number = math.nan
    if isinstance(value, (bool, str)) or not math.isfinite(number):  # "0.5": strings, as check_positive_int
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_class_ids(config) -> None:
    """One name per head output: with gaps (e.g. {0, 1, 3}) the head has 3 outputs and class 2 no name (evaluation
    failed with KeyError at the end, labels 3 were refused as beyond the classes). After ``super().__init__``."""
    if sorted(config.id2label) != list(range(config.num_labels)):
        raise ValueError(f"id2label must name the classes 0..{config.num_labels - 1} (one per head output), "
                         f"got the ids {sorted(config.id2label)[:12]}")


def class_names_by_id(id2label) -> dict:
    """``id2label`` as ``{class id (int): name}``: a list of names is taken in order, a dict's keys may be strings
    (JSON's)."""
    if isinstance(id2label, (list, tuple)):
        return dict(enumerate(id2label))
    try:
        return {int(index): name for index, name in id2label.items()}
    except (AttributeError, TypeError, ValueError):  # a string, {"sky": ...}
        raise ValueError(f"id2label must map the class ids 0, 1, ... to names (a dict, or a list of names), got "
                         f"{id2label!r}") from None


def is_loss_weight(value) -> bool:
    """A finite, non-negative number (a negative weight would train that output away from the labels)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def check_loss_weights(weights, order: str) -> list[float]:
    """Three loss weights, not all zero (all zeros would train nothing)."""
    valid = isinstance(weights, (list, tuple)) and all(is_loss_weight(w) for w in weights)
    if not valid or len(weights) != 3 or not any(weights):
        raise ValueError(f"loss_weights needs 3 non-negative numbers, not all 0 ({order}), got {weights!r}")
    return [float(w) for w in weights]


def own_fields(config_class) -> set[str]:
    """The keyword arguments of ``config_class.__init__`` (its own fields)."""
    return set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}


def check_misspelt_fields(config_class, names) -> None:
    """Refuse a keyword that is not one of the config's fields but nearly is one (``finetune_strategyy``):
    transformers' configs keep any keyword as an attribute, so the model silently used the default. Keywords far from
    every field (another tool's extras in a config.json) are kept, as transformers does."""
    own = own_fields(config_class)
    for name in names:
        if name in own or name.startswith("_"):
            continue
        close = difflib.get_close_matches(name, sorted(own), n=1, cutoff=0.85)
        if close:
            raise ValueError(f"{config_class.__name__}: no field {name!r}; did you mean {close[0]!r}?")


class CheckedOverrides:
    """A config mixin: transformers builds a config from its file, then sets ``from_pretrained(..., field=value)``
    overrides with ``setattr``, past ``__init__``'s checks (``from_pretrained(repo, fusion_reduction=1000)`` built a
    model that failed later with an IndexError). Overrides of the config's own arguments go to ``__init__`` instead.
    A keyword that nearly names a field is refused (:func:`check_misspelt_fields`), here and in ``__init__``."""

    def __init__(self, **kwargs):  # the config's own __init__ passes on what its fields did not take
        check_misspelt_fields(type(self), kwargs)
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        own = own_fields(cls)
        if kwargs.get("id2label") is not None:
            # Through __init__ (int keys, as read from a file; the class-id check), not transformers' setattr, which
            # kept a JSON-read {"0": ...}'s string keys (id2label[0]: KeyError), saved a list of names that did not
            # load again, and kept the file's label2id (names of the old classes).
            id2label = class_names_by_id(kwargs.pop("id2label"))
            label2id = kwargs.pop("label2id", None) or {name: index for index, name in id2label.items()}
            # (a num_labels in the dict, one Dinov2SegConfig adds to a file without classes, would win over it)
            config_dict = {**{key: value for key, value in config_dict.items() if key != "num_labels"},
                           "id2label": id2label, "label2id": label2id}
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        check_misspelt_fields(cls, kwargs)  # from_pretrained(repo, finetune_strategyy=...): set and never read
        return super().from_dict({**config_dict, **overrides}, **kwargs)
