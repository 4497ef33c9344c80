"""The pretraining recipes, one module per family, found through ``RECIPES``.

=====================  ====================================  =========================================
                       ATST-Clip (``clip.py``)                ATST-Frame (``frame.py``)
=====================  ====================================  =========================================
crops per clip          two independent random crops          one crop, used for both views
view A                  Mixup (own bank) + Random Resize      the mel, unaugmented (official
                        Crop on a 1.5x wider canvas           ``aug_tea=False``)
view B                  the same, independently               Mixup + Random Resize Crop in frequency
                                                              only: frames aligned with view A
token mask              none                                  spans of ``mask_span`` tokens, one mask
                                                              per clip shared by both views
loss rows               CLS output, one per clip              outputs at the masked tokens
=====================  ====================================  =========================================

Everything else (teacher and student, EMA, loss, schedules, data, checkpoints) is shared.
Adding a family: its ``Family`` in ``pretrain.model.family``, a module here with a ``RECIPE``,
and its line in ``RECIPES``.
"""

from __future__ import annotations

from typing import Any

from pretrain.training.recipes import clip, frame
from pretrain.training.recipes.base import CPU_SIZED, Recipe, crop_mels

RECIPES: dict[str, Recipe] = {recipe.family: recipe for recipe in (clip.RECIPE, frame.RECIPE)}
PRESETS: dict[str, dict[str, Any]] = {name: dict(p) for r in RECIPES.values() for name, p in r.presets.items()}
DEFAULT_PRESET = {family: recipe.default_preset for family, recipe in RECIPES.items()}
OFFICIAL_PRESETS = tuple(name for recipe in RECIPES.values() for name in recipe.official_presets)

__all__ = ["CPU_SIZED", "DEFAULT_PRESET", "OFFICIAL_PRESETS", "PRESETS", "RECIPES", "Recipe", "crop_mels"]
