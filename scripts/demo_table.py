"""Print the head-to-head tables of an ``emoreg demo`` run (``summary.json``) as Markdown.

    python scripts/demo_table.py emoreg-demo/summary.json

Table 1: each arm pooled over its seeds (value [95% CI]). Table 2: each arm against ``none``, paired by
held-out request (mean difference [bootstrap 95% CI], sign-flip p). Table 3: the checks of issue 9's target.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(metric, digits: int = 3) -> str:
    if not metric:
        return "-"
    low, high = metric["ci"]
    return f"{metric['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def main(path: str) -> int:
    summary = json.loads(Path(path).read_text())
    arms, paired, verdicts = summary["arms"], summary["paired"], summary["verdicts"]
    seeds = summary["settings"]["seeds"]
    print(f"Seeds {seeds}; layer {summary['layer']}; {summary['seconds']:.0f} s in all.\n")
    columns = [("text emotion", "text_emotion", 3), ("distress rate", "failure_rate", 3),
               ("skill (format)", "skill", 3),
               ("turn-start shift (z)", "shift", 2), ("reply shift (z)", "shift_response", 2),
               ("held-out shift (z)", "heldout_shift", 2), ("perplexity", "capability", 2),
               ("KL to base", "kl_to_base", 3)]
    print("| arm | " + " | ".join(c[0] for c in columns) + " | verdict |")
    print("|---" * (len(columns) + 2) + "|")
    for arm, row in arms.items():
        verdict = verdicts.get(arm, {}).get("label", "")
        print(f"| {arm} | " + " | ".join(cell(row.get(key), digits) for _, key, digits in columns) + f" | {verdict} |")
    print()
    names = [("text emotion", "text_emotion"), ("distress", "failure"), ("skill", "skill"),
             ("frozen reading of replies (z)", "reply_frozen"), ("own reading of replies (z)", "reply_own")]
    print("| arm - none | " + " | ".join(n for n, _ in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for arm, comparisons in paired.items():
        if "vs_none" not in comparisons:
            continue
        cells = []
        for _, key in names:
            diff = comparisons["vs_none"][key]
            cells.append(f"{cell(diff)} p={diff['p_value']:.3f}")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    print()
    checks = summary["checks"]
    keys = ["spillover_halved", "skill_kept_90_percent", "capability_within_5_percent", "kl_within_5_percent",
            "no_concealment", "meets_target"]
    print("| arm | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for arm, result in checks.items():
        if arm == "none_moves_toward_failure":
            continue
        print(f"| {arm} | " + " | ".join("yes" if result[k]["held"] else "no" for k in keys) + " |")
    none = checks["none_moves_toward_failure"]
    print(f"\nnone moves toward the failure: {none['held']}; none learns the skill: {none['none_learns_skill']} "
          f"(skill gain {cell(none['skill_gain'])})")
    if summary.get("calibration"):
        print(f"steer calibration: {summary['calibration']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "emoreg-demo/summary.json"))
