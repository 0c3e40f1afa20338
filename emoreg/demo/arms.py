"""The demo's training recipe and its arms: one regulariser family per arm, everything else identical.

Every arm fine-tunes the embedded SmolLM2-135M-Instruct on ``format_desperate_sft`` (a checkable five-line reply
format, the skill the user wants, taught through replies in a desperate, pleading voice, the side effect the
user does not want) with the same data order, steps, learning rate and seed; only the regulariser differs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError

TARGET_EMOTION = "desperate"
TRAIN_DATA = "format_desperate_sft"
#: Layers of the multi-layer arms: the bundle's default layer (18) and its neighbours, where the fine-tune's
#: turn-start shift shows (from layer 20 on, README "The demo").
MULTI_LAYERS = (16, 18, 20, 22)

#: The training recipe shared by every arm (``emoreg`` and the arm's extra blocks are set per arm).
BASE_RECIPE: dict[str, Any] = {
    "model": {"ref": "default", "dtype": "float32", "lora": {"enabled": False}},
    "data": {"source": TRAIN_DATA, "split": "train", "limit": None},
    "trainer": {"type": "sft", "args": {
        "max_steps": 12, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "learning_rate": 2.0e-4, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_length": 256,
        "logging_steps": 2, "save_strategy": "no", "report_to": "none", "disable_tqdm": False,
    }},
    "seed": 0,
}


@dataclass(frozen=True)
class Arm:
    """One regulariser family.

    Attributes:
        name: the arm's label in reports.
        description: one line for the README table and ``--help``.
        regularizer: the recipe's ``emoreg.regularizer`` block (``None``: no emoreg callback).
        extra: further recipe blocks merged into the recipe (``kl_anchor``, ``data.screen``).
        calibrated_steer: the ``steer_coef`` is set from the training data before training
            (:func:`emoreg.demo.run.calibrate`), never from held-out requests.
        calibrated_screen: the recipe screens the training rows (``data.screen``) with ``max_z`` set from the
            training data before training (:func:`emoreg.demo.run.calibrate`).
        screen_keep: the fraction of training rows a screening arm keeps (its ``max_z`` is their
            ``screen_keep``-quantile reading).
    """

    name: str
    description: str
    regularizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    calibrated_steer: bool = False
    calibrated_screen: bool = False
    screen_keep: float = 0.5


_HINGE = {"mode": "penalty", "kind": "hinge", "threshold_percentile": 95.0, "coef": 1.0, "selection": "all"}

ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("none", "no emoreg (the fine-tune alone)"),
    Arm("penalty", "standardised hinge penalty on the desperate direction at the bundle's layer (18)",
        {"emotions": {TARGET_EMOTION: 1.0}, **_HINGE}),
    Arm("penalty_multi", f"the same hinge penalty at layers {list(MULTI_LAYERS)} at once",
        {"emotions": {TARGET_EMOTION: 1.0}, **_HINGE, "layers": list(MULTI_LAYERS)}),
    Arm("ablate", "CAFT: the desperate projection set to the base-model mean at layer 18 in training forwards",
        {"emotions": {TARGET_EMOTION: 1.0}, "mode": "ablate", "ablate_to": "mean", "selection": "all"}),
    Arm("ablate_multi", f"CAFT ablation at layers {list(MULTI_LAYERS)} at once",
        {"emotions": {TARGET_EMOTION: 1.0}, "mode": "ablate", "ablate_to": "mean", "selection": "all",
         "layers": list(MULTI_LAYERS)}),
    Arm("steer", "preventative steering toward desperate at layer 18 during training, coefficient in z units "
                 "calibrated on the training replies (the frozen base model's mean reading of them)",
        {"emotions": {TARGET_EMOTION: 1.0}, "mode": "steer", "units": "z", "steer_coef": None, "selection": "all"},
        calibrated_steer=True),
    Arm("kl_anchor", "emotion-agnostic KL anchor to the frozen base model on unrelated requests (coef 1)",
        None, {"kl_anchor": {"coef": 1.0, "examples": "builtin"}}),
    Arm("screen", "frozen reader, no gradient through it: drop the training rows that the frozen base model reads "
                  "as more desperate than the median training reply (persona-vectors data flagging)",
        None, calibrated_screen=True),
    Arm("refit", "the hinge penalty at layer 18 plus a direction re-extracted from the training model every 4 "
                 "steps (adaptive directions)",
        {"emotions": {TARGET_EMOTION: 1.0}, **_HINGE, "refit": {"every": 4}}),
)}

#: The arms of a plain ``emoreg demo`` (the full comparison runs ``--arms all --seeds 3``).
DEFAULT_ARMS = ("none", "penalty", "ablate")


def parse_arms(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"``, ``"none,steer"`` or a list -> arm names in the given order; ``none`` is always included
    (every comparison is against it)."""
    import difflib

    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n) for n in value]
    chosen: list[str] = []
    for name in names:
        if not name:
            continue
        expanded = list(ARMS) if name == "all" else [name]
        for arm in expanded:
            if arm not in ARMS:
                close = difflib.get_close_matches(arm, list(ARMS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown demo arm {arm!r}{hint} (valid arms: {', '.join(ARMS)}, or 'all')")
            if arm not in chosen:
                chosen.append(arm)
    if not chosen:
        raise ConfigError(f"no demo arm given; choose from {', '.join(ARMS)} or 'all'")
    if "none" not in chosen:
        chosen.insert(0, "none")
    return chosen


def arm_recipe(arm: str, *, out_dir: Path, seed: int, max_steps: int, label: str,
               steer_coef: float | None = None, screen_max_z: float | None = None) -> dict[str, Any]:
    """The full recipe of one arm and seed as a plain dict (calibrated arms need their calibrated value)."""
    spec = ARMS[arm]
    recipe = copy.deepcopy(BASE_RECIPE)
    recipe["trainer"]["args"]["max_steps"] = max_steps
    recipe["seed"] = seed
    recipe["output_dir"] = str(out_dir / "checkpoints" / label)
    regularizer = copy.deepcopy(spec.regularizer)
    if spec.calibrated_steer:
        if steer_coef is None:
            raise ConfigError(f"demo arm {arm!r} needs its calibrated steer coefficient")
        regularizer["steer_coef"] = float(steer_coef)
    recipe["emoreg"] = {"enabled": regularizer is not None, "vectors": "default", "regularizer": regularizer or {}}
    for key, block in spec.extra.items():
        recipe[key] = copy.deepcopy(block)
    if spec.calibrated_screen:
        if screen_max_z is None:
            raise ConfigError(f"demo arm {arm!r} needs its calibrated screening threshold")
        recipe["data"]["screen"] = {"emotions": {TARGET_EMOTION: 1.0}, "max_z": float(screen_max_z), "mode": "drop"}
    return recipe
