"""Recipe-driven training with emoreg: ``emoreg train RECIPE [key=value ...]`` or ``python -m emoreg.train``.

``load_recipe(path, overrides)`` reads and validates a recipe (no model is loaded);
``train(recipe)`` runs it with a TRL trainer (SFT, DPO or GRPO) and emoreg attached.
"""

from __future__ import annotations

from typing import Any

from emoreg.train.recipe import Recipe, load_recipe, recipe_from_dict

__all__ = ["Recipe", "TrainResult", "load_recipe", "recipe_from_dict", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):  # imports transformers/TRL: only when asked for
        from emoreg.train import run

        return getattr(run, name)
    raise AttributeError(f"module 'emoreg.train' has no attribute {name!r}")
