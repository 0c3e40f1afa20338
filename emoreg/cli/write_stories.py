"""``emoreg write-stories``: have a model write emotion stories for a custom corpus."""

from __future__ import annotations

import argparse
import json

from emoreg.cli.common import add_model_arguments, parse_names


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "write-stories",
        help="have a (capable) model write emotion stories for a corpus file",
        description="Generate stories that evoke each emotion without naming it, as JSONL usable with "
                    "`emoreg extract --stories`. Stories that name their emotion are rejected and retried. "
                    "Small models write poor stories: read a sample before extracting from them.",
    )
    add_model_arguments(parser)
    parser.add_argument("--emotions", required=True, help="comma-separated emotions")
    parser.add_argument("--topics", default="work,family,school,health,money,travel,friends,home,nature,technology",
                        help="comma-separated topics (default: %(default)s)")
    parser.add_argument("--per-topic", type=int, default=2, help="stories per emotion and topic (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="(default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.models.loading import load_model_and_tokenizer
    from emoreg.utils.atomic import atomic_file
    from emoreg.vectors.corpus import BUILTIN_EMOTIONS, load_builtin_corpus
    from emoreg.vectors.story_generation import write_stories

    emotions = parse_names(args.emotions, "--emotions")
    topics = parse_names(args.topics, "--topics")
    known = [e for e in emotions if e in BUILTIN_EMOTIONS]
    banned = load_builtin_corpus(known).banned_words if known else {}
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    report = write_stories(model, tokenizer, emotions, topics, per_topic=args.per_topic, banned=banned,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                           progress=not args.no_progress)
    with atomic_file(args.out) as handle:
        for story in report.stories:
            handle.write(json.dumps({"emotion": story.emotion, "topic": story.topic, "text": story.text}) + "\n")
    print(f"Wrote {len(report.stories)} stories to {args.out} ({report.attempts} attempts; rejected "
          f"{report.rejected_banned} that named their emotion and {report.rejected_short} too short)")
    return 0
