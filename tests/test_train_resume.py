"""Resuming a recipe run: interrupted at step 3, resumed from checkpoint-2, it ends exactly like an uninterrupted run.

Exact means: the logged loss, learning rate, grad norm and every ``emoreg/`` metric (including the coef of
a decaying schedule, restored from emoreg_state.json) at steps 3 and 4, and every final parameter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from emoreg.train.recipe import recipe_from_dict
from tests.test_train_run import tiny_assets, tiny_recipe


class Interrupt(RuntimeError):
    pass


class InterruptAt(TrainerCallback):
    """Raise at the end of optimizer step ``step`` (after checkpoint-2, before checkpoint-4)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt(f"interrupted at step {state.global_step}")


class StepRecorder(TrainerCallback):
    """The optimizer steps this process really took."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def _recipe(root: Path, assets: dict[str, str], output: str, resume=None):
    data = tiny_recipe(root, "sft", assets=assets, max_steps=4, save_steps=2, learning_rate=1e-2,
                       lr_scheduler_type="linear")
    data["emoreg"]["regularizer"].update(schedule="linear_decay", coef=2.0)
    data["output_dir"] = str(root / output)
    data["resume_from_checkpoint"] = resume
    return recipe_from_dict(data)


def _by_step(history: list[dict]) -> dict[int, dict]:
    return {entry["step"]: entry for entry in history if "loss" in entry}


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import train

    assets = tiny_assets(tmp_path / "assets")
    full = train(_recipe(tmp_path, assets, "full"))

    with pytest.raises(Interrupt):
        train(_recipe(tmp_path, assets, "part"), callbacks=[InterruptAt(3)])
    part = tmp_path / "part"
    assert sorted(p.name for p in part.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (part / "checkpoint-2" / TRAIN_INFO_FILE).is_file()
    assert (part / "checkpoint-2" / "emoreg_state.json").is_file()

    recorder = StepRecorder()
    resumed = train(_recipe(tmp_path, assets, "part", resume=True), callbacks=[recorder])
    assert resumed.global_step == full.global_step == 4 and recorder.steps == [3, 4]

    want, got = _by_step(full.log_history), _by_step(resumed.log_history)
    assert sorted(want) == sorted(got) == [1, 2, 3, 4]  # steps 1-2 come from checkpoint-2's trainer_state.json
    for step in (3, 4):
        keys = [k for k in want[step] if k.startswith("emoreg/") or k in ("loss", "learning_rate", "grad_norm")]
        assert any(k.endswith("/penalty") for k in keys)
        assert sorted(keys) == sorted(k for k in got[step] if k.startswith("emoreg/") or k in keys)
        for key in keys:
            assert got[step][key] == pytest.approx(want[step][key], rel=1e-6, abs=1e-9), (step, key)
    assert want[4]["emoreg/coef"] == pytest.approx(0.5)  # linear decay from 2.0: step 3 of 4 -> 2 * (1 - 3/4)

    final_full = load_file(tmp_path / "full" / "model.safetensors")
    final_resumed = load_file(part / "model.safetensors")
    initial = load_file(Path(assets["model"]) / "model.safetensors")
    assert final_full.keys() == final_resumed.keys()
    assert any(not torch.equal(final_full[k], initial[k]) for k in final_full)
    for key in final_full:
        torch.testing.assert_close(final_resumed[key], final_full[key], rtol=1e-6, atol=1e-7, msg=key)


def test_resume_from_an_explicit_checkpoint_path(tmp_path):
    from emoreg.train.run import train

    assets = tiny_assets(tmp_path / "assets")
    with pytest.raises(Interrupt):
        train(_recipe(tmp_path, assets, "run"), callbacks=[InterruptAt(3)])
    checkpoint = str(tmp_path / "run" / "checkpoint-2")
    recorder = StepRecorder()
    resumed = train(_recipe(tmp_path, assets, "run", resume=checkpoint), callbacks=[recorder])
    assert resumed.global_step == 4 and recorder.steps == [3, 4]


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill_during_its_save(tmp_path, caplog):
    import logging
    import shutil

    from emoreg.errors import ConfigError
    from emoreg.train.run import train

    assets = tiny_assets(tmp_path / "assets")
    with pytest.raises(Interrupt):
        train(_recipe(tmp_path, assets, "run"), callbacks=[InterruptAt(3)])
    run = tmp_path / "run"
    # a kill during the save of checkpoint-4: weights written, trainer_state.json / emoreg_state.json not yet
    shutil.copytree(run / "checkpoint-2", run / "checkpoint-4")
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    (run / "checkpoint-4" / "emoreg_state.json").unlink()
    recorder = StepRecorder()
    with caplog.at_level(logging.WARNING, logger="emoreg.train.run"):
        resumed = train(_recipe(tmp_path, assets, "run", resume=True), callbacks=[recorder])
    assert resumed.global_step == 4 and recorder.steps == [3, 4]
    assert "skipping incomplete checkpoint(s) checkpoint-4 (no trainer_state.json, emoreg_state.json)" in caplog.text
    # the resumed run saved a complete checkpoint-4; an explicit path to an incomplete one is refused
    shutil.copytree(run / "checkpoint-2", run / "checkpoint-9")
    (run / "checkpoint-9" / "trainer_state.json").unlink()
    with pytest.raises(ConfigError, match=r"checkpoint-9 is incomplete \(no trainer_state.json; the run"):
        train(_recipe(tmp_path, assets, "again", resume=str(run / "checkpoint-9")))


def test_resume_with_no_complete_checkpoint_names_them(tmp_path):
    from emoreg.errors import ConfigError
    from emoreg.train.run import resolve_resume

    assets = tiny_assets(tmp_path / "assets")
    recipe = _recipe(tmp_path, assets, "run", resume=True)
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no checkpoint in .* is complete: checkpoint-2 \(no trainer_state.json"):
        resolve_resume(recipe)
