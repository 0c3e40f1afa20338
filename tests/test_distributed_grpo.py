"""emoreg under GRPO + DeepSpeed ZeRO-3 (2 CPU ranks on gloo, accelerate launch).

TRL's ``unwrap_model_for_generation`` (``ds3_gather_for_generation=True``) calls DeepSpeed's
``remove_hooks`` before each generation and ``add_hooks`` after it, which re-registers DeepSpeed's hooks on
every submodule. tests/distributed/deepspeed_grpo.py records emoreg's hooks through that, and the tokens of
the training forwards; this test checks that emoreg's hooks are never lost nor doubled, that rollouts add no
metrics, and that nothing of emoreg remains after training. Launch helpers come from tests/test_distributed.py.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.test_distributed import SCRIPTS, _cpu_variant, _env, _launch


@pytest.mark.slow
def test_grpo_under_zero3_keeps_hooks_single_and_counts_training_tokens_only(tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("trl")
    config = _cpu_variant("deepspeed_zero3.yaml", tmp_path)
    out = tmp_path / "run"
    _launch(lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                          "--main_process_port", str(port), str(SCRIPTS / "deepspeed_grpo.py"), "--out", str(out)],
            _env())
    result = json.loads((out / "result.json").read_text())
    ga, steps, layers = result["ga"], result["steps"], result["hooked_layers"]
    assert result["world_size"] == 2 and len(result["ranks"]) == 2
    expected_emoreg = {str(i): int(i in layers) for i in range(result["num_layers"])}

    for rank in result["ranks"]:
        # What really ran: ZeRO-3 with partitioned parameters, one generation per optimizer step.
        assert rank["engine"] == "DeepSpeedEngine" and rank["zero_stage"] == 3 and rank["partitioned"]
        assert rank["generations"] == steps
        phases = [h["phase"] for h in rank["hooks"]]
        assert phases.count("training_forward") == ga * steps == len(rank["training_tokens"])
        assert phases.count("after_generate") == phases.count("generation_exit") == steps
        # The rollouts ran through the hooked layers (one forward per generated token), so excluding them
        # from the token counts below is a real check.
        assert len(rank["rollout_forwards"]) >= steps and all(n > 0 for n in rank["rollout_forwards"])
        # (a) exactly one emoreg hook per hooked layer (none elsewhere) at every point.
        for record in rank["hooks"]:
            assert record["emoreg"] == expected_emoreg, (rank["rank"], record)
        # remove_hooks/add_hooks really ran: DeepSpeed's hooks are gone inside the generation context and
        # back for training (so the check above is not vacuous).
        for record in rank["hooks"]:
            ds_hooks = sum(record["other"].values())
            if record["phase"] in ("generation_enter", "after_generate"):
                assert ds_hooks == 0, (rank["rank"], record)
            else:
                assert ds_hooks > 0, (rank["rank"], record)
        # (c) nothing of emoreg remains after training.
        assert rank["after_train"] == {"emoreg_hooks": [], "generate_patched": False, "owner_left": False,
                                       "regularizer_attached": False}

    # (b) each logged step counts the training-forward tokens of both ranks, rollouts excluded.
    logs = [entry for entry in result["log_history"] if "loss" in entry]
    assert len(logs) == steps
    for step, entry in enumerate(logs):
        window = slice(step * ga, (step + 1) * ga)
        tokens = sum(sum(rank["training_tokens"][window]) for rank in result["ranks"])
        assert tokens > sum(result["ranks"][0]["training_tokens"][window]) > 0
        for layer in layers:
            assert entry[f"emoreg/L{layer}/tokens"] == tokens, (step, layer, entry)
        assert entry["emoreg/coef"] == result["coef"]
        for emotion in result["rules"]:
            for layer in layers:
                assert f"emoreg/{emotion}/L{layer}/penalty" in entry
