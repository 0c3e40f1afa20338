"""``emoreg train``: run a training recipe (TRL SFT/DPO/GRPO with emoreg attached) in this process.

For several processes or DeepSpeed, launch the same thing with Accelerate:
``accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml -m emoreg.train RECIPE [key=value ...]``.
"""

from __future__ import annotations

import argparse
import json

from emoreg.cli.common import add_threads_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune or RL-train a model from a recipe, with emoreg attached",
        description="Train from an OmegaConf recipe (see recipes/README.md). Overrides are dotted KEY=VALUE pairs, "
                    "e.g. trainer.args.max_steps=4 model.lora.enabled=true. Every key is checked before any model "
                    "loads.")
    parser.add_argument("recipe", metavar="RECIPE", help="a recipe YAML file, e.g. recipes/sft.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of recipe keys")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    add_threads_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.train.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.create(recipe.to_dict())), end="")
        return 0
    from emoreg.train.run import train

    result = train(recipe)
    summary = {"output_dir": result.output_dir, "global_step": result.global_step, "train_loss": result.train_loss,
               "final_loss": result.final_loss, "seconds": round(result.seconds, 1)}
    print("emoreg train: done " + json.dumps(summary))
    return 0
