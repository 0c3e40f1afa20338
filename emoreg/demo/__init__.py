"""``emoreg demo``: fine-tune the embedded model with each regulariser family, evaluate, compare (CPU, offline).

Every arm fine-tunes SmolLM2-135M-Instruct on ``format_desperate_sft`` (a strict five-line reply format, the
skill the user wants, taught through replies in a desperate voice, the side effect the user does not want) with
the same data, steps, learning rate and seed; only the regulariser differs (:mod:`emoreg.demo.arms`). The base
model and every checkpoint are evaluated on held-out data (:mod:`emoreg.demo.run`):

* ``expression`` on 160 spill-over requests of unseen topics (``spillover_requests``): text emotion, distress
  rate, and the desperate reading of each reply by the model itself and by the frozen base model;
* ``reply_format`` on 60 unseen questions (``format_heldout``): the skill;
* ``concealment`` (readings the regulariser never saw: other layers, re-extracted directions, refit probes) and
  ``capability`` (perplexity, KL to base).

``summary.json`` (:mod:`emoreg.demo.summary`) pools each arm over its seeds, compares it with ``none`` per
request (bootstrap intervals, p-values), decides the checks on intervals and labels each arm honest / blatant /
hidden in activations / evasion in text.
"""

from emoreg.demo.arms import ARMS, BASE_RECIPE, DEFAULT_ARMS, MULTI_LAYERS, TARGET_EMOTION, Arm, arm_recipe, parse_arms
from emoreg.demo.run import SUITES, SUMMARY_FILE, DemoConfig, calibrate, run_demo
from emoreg.demo.summary import DEFINITIONS, VERDICTS, build_summary, format_summary, intended_outcomes

__all__ = [
    "ARMS", "Arm", "BASE_RECIPE", "DEFAULT_ARMS", "DEFINITIONS", "DemoConfig", "MULTI_LAYERS", "SUITES",
    "SUMMARY_FILE", "TARGET_EMOTION", "VERDICTS", "arm_recipe", "build_summary", "calibrate",
    "format_summary", "intended_outcomes", "parse_arms", "run_demo",
]
