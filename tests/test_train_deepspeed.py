"""``accelerate launch -m emoreg.train`` under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks (gloo).

The repo's ``accelerate_configs/deepspeed_zero{2,3}.yaml`` are turned into CPU variants (2 processes, fp32,
``use_cpu``), as tests/test_distributed.py does, and the tiny SFT recipe of tests/test_train_run.py runs
2 optimizer steps with a checkpoint after each. Checked: the launch succeeds; DeepSpeed really ran with
2 ranks (its per-rank ZeRO optimizer shards are in each checkpoint); the output directory and each
checkpoint hold emoreg_train.json, emoreg_config.json and emoreg_state.json; the final model is saved whole
(gathered from the ZeRO-3 partitions); and the first step's ``emoreg/`` metrics, reduced over both ranks,
equal a single-process run with twice the per-device batch on the same rows. About 20-40 s per stage on
2 busy cores (DeepSpeed's CPU shared-memory op is JIT-compiled once per machine, ~25 s, the first time).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from emoreg.train.recipe import recipe_from_dict
from tests.test_distributed import _cpu_variant, _env, _launch
from tests.test_train_run import tiny_assets, tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def _emoreg(entry: dict) -> dict[str, float]:
    return {k: v for k, v in entry.items() if k.startswith("emoreg/")}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_recipe_trains_under_deepspeed_on_two_cpu_ranks(tmp_path, stage):
    pytest.importorskip("deepspeed")
    from emoreg.models.provenance import TRAIN_INFO_FILE
    from emoreg.train.run import train

    assets = tiny_assets(tmp_path / "assets")
    data = tiny_recipe(tmp_path, "sft", assets=assets, max_steps=2, save_steps=1, per_device_train_batch_size=2)
    data["output_dir"] = str(tmp_path / "ds")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(data))
    config = _cpu_variant(f"deepspeed_zero{stage}.yaml", tmp_path)

    output = _launch(lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                                   "--main_process_port", str(port), "-m", "emoreg.train", str(recipe_path),
                                   "trainer.args.use_cpu=true"],
                     _env())
    assert "emoreg train: done" in output

    out = Path(data["output_dir"])
    for directory in (out / "checkpoint-1", out / "checkpoint-2", out):
        for name in (TRAIN_INFO_FILE, "emoreg_config.json", "emoreg_state.json"):
            assert (directory / name).is_file(), directory / name
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        shards = sorted(p.name for p in (out / checkpoint).glob("global_step*/*optim_states.pt"))
        assert len(shards) == 2 and any("rank_1" in name for name in shards), shards
    assert (out / "model.safetensors").is_file()
    info = json.loads((out / TRAIN_INFO_FILE).read_text())
    assert info["base_model"] == assets["model"] and info["regularizer"]["kind"] == "hinge"

    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    logs = [entry for entry in history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)

    # One process, per-device batch 4: the same 4 rows in step 1, so the same reduced metrics.
    single = dict(data, output_dir=str(tmp_path / "single"))
    single["trainer"] = dict(data["trainer"], args={**data["trainer"]["args"], "max_steps": 1,
                                                    "per_device_train_batch_size": 4, "save_strategy": "no"})
    alone = next(entry for entry in train(recipe_from_dict(single)).log_history if "loss" in entry)
    got, want = _emoreg(logs[0]), _emoreg(alone)
    assert got.keys() == want.keys() and "emoreg/L2/tokens" in got
    assert got["emoreg/L2/tokens"] == want["emoreg/L2/tokens"]
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
