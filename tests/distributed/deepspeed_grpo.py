"""GRPOTrainer on a tiny Llama under DeepSpeed ZeRO-3 (CPU, gloo, 2 ranks) with emoreg.attach.

    DS_ACCELERATOR=cpu accelerate launch --config_file ZERO3_CPU.yaml --main_process_port PORT \
        tests/distributed/deepspeed_grpo.py --out DIR

Around every generation TRL's ``unwrap_model_for_generation`` (``ds3_gather_for_generation=True``) gathers
the ZeRO-3 parameters and calls DeepSpeed's ``remove_hooks`` on entry and ``add_hooks`` on exit, which
re-registers DeepSpeed's hooks on every submodule. emoreg's own hooks must survive that exactly once.

Each rank records:

* ``hooks``: the number of emoreg forward hooks on every decoder layer (``{layer index: count}``) at each
  training forward, on entering the generation context (after ``remove_hooks``), right after each
  ``generate`` call and right after leaving the context (after ``add_hooks``); with the number of
  DeepSpeed's own forward hooks on the same layers, to show ``remove_hooks``/``add_hooks`` really ran;
* ``rollout_forwards``: the real tokens of each no-grad forward (generation) through the hooked model;
* ``training_tokens``: the non-sink real tokens of each training forward (training mode, grad enabled,
  recorded with a pre-hook on the unwrapped model), which exclude the rollouts;
* ``after_train``: the emoreg hooks left anywhere in the model and whether the generate wrapper remains.

The records of both ranks are gathered and rank 0 writes ``DIR/result.json`` with them and its
``log_history``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

if __name__ == "__main__":  # launched as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from tests.distributed.common import (
    COEF,
    LAYERS,
    RULES,
    emoreg_config,
    rank_and_world,
    skip_deepspeed_shm_build,
    write_json,
)

GA = 2
STEPS = 2


def _is_emoreg(fn) -> bool:
    return (getattr(fn, "__module__", None) or "").startswith("emoreg")


def hook_counts(layers) -> dict[str, dict[str, int]]:
    """Per decoder layer: emoreg's forward hooks and all other (DeepSpeed's) forward hooks."""
    emoreg, other = {}, {}
    for i, layer in enumerate(layers):
        fns = list(layer._forward_hooks.values())
        emoreg[str(i)] = sum(_is_emoreg(fn) for fn in fns)
        other[str(i)] = len(fns) - emoreg[str(i)]
    return {"emoreg": emoreg, "other": other}


def emoreg_hooks_anywhere(*models) -> list[str]:
    found = []
    for model in models:
        for name, module in model.named_modules():
            for fn in (*module._forward_hooks.values(), *module._forward_pre_hooks.values()):
                if _is_emoreg(fn):
                    found.append(f"{type(model).__name__}:{name}")
    return found


def _prompts(n: int = 16):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"tell story {i}{' again' * (i % 3)}" for i in range(n)]})


def _reward(completions, **kwargs):
    return [float(len(set(c))) + c.count("e") for c in completions]


def run(out: Path) -> None:
    import trl
    import trl.trainer.grpo_trainer as grpo_module

    from emoreg.integrations import attach
    from emoreg.models.layout import find_decoder_layers, unwrap_model
    from tests.regularizer_helpers import content_mask, make_bundle
    from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer
    from tests.trainer_harness import SGD_ARGS

    out.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()

    model = make_tiny_llama()
    model.set_attn_implementation("sdpa")  # left-padded prompts: see tests/test_integration_trl.py
    vectors = make_bundle(model)
    layers = find_decoder_layers(model)
    settings = {**SGD_ARGS, "max_steps": STEPS, "gradient_checkpointing": False}
    args = trl.GRPOConfig(output_dir=str(out / "trainer"), per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=6, gradient_accumulation_steps=GA, beta=0.0,
                          ds3_gather_for_generation=True, **settings)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=_reward, args=args, train_dataset=_prompts(),
                              processing_class=make_tiny_tokenizer())
    callback = attach(trainer, vectors, emoreg_config(selection="all"))

    hooks: list[dict] = []
    training_tokens: list[int] = []
    rollout_forwards: list[int] = []  # no-grad forwards through the hooked model (generation steps)
    generations = 0

    def record(phase: str) -> None:
        hooks.append({"phase": phase, **hook_counts(layers)})

    def training_pre_hook(module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            record("training_forward")
            training_tokens.append(int(content_mask(kwargs["attention_mask"]).sum()))
        elif not torch.is_grad_enabled():
            rollout_forwards.append(int(kwargs["attention_mask"].sum()) if "attention_mask" in kwargs else -1)

    original_unwrap = grpo_module.unwrap_model_for_generation

    @contextlib.contextmanager
    def recording_unwrap(*a, **kw):
        nonlocal generations
        with original_unwrap(*a, **kw) as unwrapped:
            record("generation_enter")
            generate = unwrapped.generate  # emoreg's wrapper (an instance attribute) once attached
            had_own = "generate" in unwrapped.__dict__

            def counting_generate(*ga, **gk):
                try:
                    return generate(*ga, **gk)
                finally:
                    record("after_generate")

            unwrapped.generate = counting_generate
            try:
                yield unwrapped
            finally:
                if had_own:
                    unwrapped.generate = generate
                else:
                    del unwrapped.generate
        record("generation_exit")
        generations += 1

    grpo_module.unwrap_model_for_generation = recording_unwrap
    handle = model.register_forward_pre_hook(training_pre_hook, with_kwargs=True)
    try:
        trainer.train()
    finally:
        handle.remove()
        grpo_module.unwrap_model_for_generation = original_unwrap

    base = unwrap_model(trainer.model)
    mine = {
        "rank": rank,
        "hooks": hooks,
        "training_tokens": training_tokens,
        "rollout_forwards": rollout_forwards,
        "generations": generations,
        "after_train": {
            "emoreg_hooks": emoreg_hooks_anywhere(trainer.model_wrapped, base),
            "generate_patched": "generate" in base.__dict__,
            "owner_left": hasattr(base, "_emoreg_regularizer"),
            "regularizer_attached": callback.regularizer is not None and callback.regularizer.attached,
        },
        "engine": type(trainer.model_wrapped).__name__,
        "zero_stage": int(trainer.model_wrapped.zero_optimization_stage()),
        "partitioned": all(hasattr(p, "ds_id") for p in base.parameters()),
    }
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    if trainer.accelerator.is_main_process:
        write_json(out / "result.json", {
            "world_size": world, "ga": GA, "steps": STEPS, "coef": COEF, "rules": sorted(RULES),
            "hooked_layers": LAYERS,
            "num_layers": len(layers), "ranks": gathered, "log_history": trainer.state.log_history,
        })
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    skip_deepspeed_shm_build()
    run(args.out)


if __name__ == "__main__":
    main()
