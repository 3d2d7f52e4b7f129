"""Keyword overrides of ``from_pretrained`` checked like the config file's values."""

from __future__ import annotations

import inspect


class CheckedOverrides:
    """A config mixin: transformers builds a config from its file, then sets ``from_pretrained(..., field=value)``
    overrides with ``setattr``, past ``__init__``'s checks (``from_pretrained(repo, fusion_reduction=1000)`` built a
    model that failed later with an IndexError). Overrides of the config's own arguments go to ``__init__`` instead."""

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        return super().from_dict({**config_dict, **overrides}, **kwargs)
