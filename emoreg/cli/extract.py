"""``emoreg extract``: extract emotion vectors and write a bundle with its validation report."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from emoreg.cli.common import add_model_arguments, parse_layers, parse_names

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract emotion vectors from a model and save a bundle",
        description="Extract emotion vectors (difference of means over stories, dialogues and/or labelled text, "
                    "neutral principal components projected out, sources combined per emotion) at every layer, "
                    "save the bundle and its validation report.",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True,
                        help="bundle directory to write: a new path, an empty directory, or an existing bundle "
                             "with --overwrite (anything else is refused before any work starts)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the bundle already at --out (other files and folders in it are kept)")
    parser.add_argument("--layers", default="all", help="'all', '10,20' or '10-20' (default: all)")
    parser.add_argument("--emotions", help="comma-separated emotions to extract (default: every emotion in the corpus)")
    parser.add_argument("--stories", action="append", default=[], metavar="FILE",
                        help="JSONL/CSV/TSV of stories (emotion, topic, text); adds emotions or replaces the "
                             "built-in stories of the emotions it has; repeatable")
    parser.add_argument("--no-builtin-stories", action="store_true",
                        help="use only the --stories (and --dialogues) files, no built-in stories or dialogues")
    parser.add_argument("--sources", default=None,
                        help="comma-separated example sources for the directions: stories, dialogues, labelled "
                             "(default: stories, dialogues when there are any, labelled when --labelled is "
                             "given); an emotion in several sources gets the mean of their unit directions")
    parser.add_argument("--dialogues", action="append", default=[], metavar="FILE",
                        help="JSONL/CSV/TSV of dialogues (emotion, topic, speaker, user, assistant); adds "
                             "emotions or replaces the built-in dialogues of the emotions it has; repeatable")
    parser.add_argument("--no-builtin-dialogues", action="store_true", help="use only the --dialogues files")
    parser.add_argument("--labelled", metavar="FILE",
                        help="human-written labelled text (JSONL/CSV/TSV, or a GoEmotions Ekman TSV with "
                             "--labelled-format goemotions) as a source of directions")
    parser.add_argument("--labelled-format", choices=["jsonl", "csv", "tsv", "goemotions"],
                        help="format of --labelled (default: from the extension)")
    parser.add_argument("--text-field", default="text", help="text column of --labelled (default: %(default)s)")
    parser.add_argument("--label-field", default="label", help="label column of --labelled (default: %(default)s)")
    parser.add_argument("--label-map", metavar="LABEL=EMOTION,...",
                        help="map --labelled labels to emotions, e.g. joy=happy,sadness=sad (unmapped labels "
                             "are skipped; without a map, labels are emotion names; rows mapped to neutral are "
                             "the baseline, not an emotion)")
    parser.add_argument("--labelled-per-label", type=int, metavar="N",
                        help="at most N rows per emotion from --labelled (seeded sample; default: all)")
    parser.add_argument("--neutral", metavar="FILE",
                        help="JSONL/CSV/TSV of neutral texts (text) replacing the built-in ones")
    parser.add_argument("--token-offset", type=int, default=50,
                        help="average story tokens from this position on; short stories start at half their "
                             "length instead (default: %(default)s)")
    parser.add_argument("--sink-tokens", type=int, default=1,
                        help="leading real tokens of each sequence excluded as attention sinks (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="truncate texts to this many tokens (default: %(default)s)")
    parser.add_argument("--pca-variance", type=float, default=0.5,
                        help="project out the neutral principal components explaining this fraction of "
                             "variance; 0 disables (default: %(default)s)")
    parser.add_argument("--max-pcs", type=int, help="cap on the number of neutral components projected out")
    parser.add_argument("--default-layer", type=int, help="the bundle's default layer (default: about 2/3 of depth)")
    parser.add_argument("--goemotions", metavar="TSV",
                        help="GoEmotions Ekman TSV (e.g. ekman_dev.tsv) for the external validation check")
    parser.add_argument("--valence", metavar="FILE",
                        help="texts with human valence ratings for the validation report: a VADER ground-truth "
                             "file (id<TAB>rating<TAB>text, e.g. tweets_GroundTruth.txt) or JSONL/CSV/TSV with "
                             "text and valence fields")
    parser.add_argument("--reply-agreement", action="store_true",
                        help="validation: generate the model's replies to the built-in probe scenarios and compare "
                             "the vectors' reading of them with the text-emotion classifier's (AUC per emotion)")
    parser.add_argument("--no-validate", action="store_true", help="skip the validation report")
    parser.add_argument("--seed", type=int, default=0, help="seed for the statistics sample (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse ``--out`` before any work: not a bundle (never replaced), or a bundle without ``--overwrite``."""
    from emoreg.errors import ConfigError
    from emoreg.utils.atomic import check_replaceable
    from emoreg.vectors.bundle import is_bundle_dir

    check_replaceable(out, is_bundle_dir, "an emoreg bundle")
    if is_bundle_dir(out) and not overwrite:
        raise ConfigError(f"--out {out} already holds an emoreg bundle; pass --overwrite to replace it "
                          "(other files in it are kept) or choose a new path")


def run(args: argparse.Namespace) -> int:
    from emoreg.errors import ConfigError
    from emoreg.models.loading import load_model_and_tokenizer, resolve_model_source
    from emoreg.vectors.corpus import Corpus, load_builtin_corpus, load_builtin_neutral, load_neutral, load_stories
    from emoreg.vectors.dialogues import load_dialogues
    from emoreg.vectors.extraction import SOURCES, ExtractionConfig, extract_emotion_vectors
    from emoreg.vectors.labelled import load_labelled, parse_label_map
    from emoreg.vectors.validation import build_validation_report, summarize
    from emoreg.vectors.validation_report import write_validation_report

    check_out(Path(args.out), overwrite=args.overwrite)
    layers = parse_layers(args.layers)
    emotions = parse_names(args.emotions, "--emotions")
    extra = [story for path in args.stories for story in load_stories(path)]
    neutral = load_neutral(args.neutral) if args.neutral else None
    if args.no_builtin_stories:
        if not extra:
            raise ConfigError("--no-builtin-stories needs at least one --stories FILE")
        corpus = Corpus(stories=extra, neutral=neutral if neutral is not None else load_builtin_neutral())
    else:
        corpus = load_builtin_corpus().with_stories(extra)
        if neutral is not None:
            corpus = corpus.with_neutral(neutral)
    label_map = parse_label_map(args.label_map)
    if not args.labelled:
        stray = [flag for flag, value in (("--label-map", args.label_map), ("--labelled-format", args.labelled_format),
                                          ("--labelled-per-label", args.labelled_per_label)) if value is not None]
        if stray:
            raise ConfigError(f"{', '.join(stray)} only applies to --labelled FILE, which was not given")
    dialogues = [d for path in args.dialogues for d in load_dialogues(path)]
    if args.no_builtin_dialogues:
        corpus = replace(corpus, dialogues=[])
    corpus = corpus.with_dialogues(dialogues)
    if args.labelled:
        labelled = load_labelled(args.labelled, text_field=args.text_field, label_field=args.label_field,
                                 label_map=label_map, file_format=args.labelled_format,
                                 per_label=args.labelled_per_label, seed=args.seed)
        corpus = corpus.with_labelled(labelled.texts, labelled.description)
    sources = parse_names(args.sources, "--sources") or list(ExtractionConfig().resolved_sources(corpus))
    unknown = [name for name in sources if name not in SOURCES]
    if unknown:
        raise ConfigError(f"--sources: unknown source(s) {unknown}; choose from {list(SOURCES)}")
    if "labelled" in sources and not args.labelled:
        raise ConfigError("--sources includes 'labelled' but no --labelled FILE was given")
    if "stories" not in sources and not args.no_builtin_stories and extra:
        raise ConfigError("--stories was given but --sources does not include 'stories'")
    corpus = corpus.select(emotions)
    if "stories" in sources:  # before the model loads, naming the files the stories came from
        from emoreg.errors import DataFormatError

        try:
            corpus.validate()
        except DataFormatError as exc:
            files = [str(path) for path in args.stories]
            origin = ", ".join(files) if args.no_builtin_stories else ", ".join(["the built-in corpus", *files])
            raise DataFormatError(f"{exc} (stories from {origin})") from None
    config = ExtractionConfig(
        layers=layers, token_offset=args.token_offset, sink_tokens=args.sink_tokens, batch_size=args.batch_size,
        max_length=args.max_length, pca_variance=args.pca_variance, max_pcs=args.max_pcs,
        default_layer=args.default_layer, seed=args.seed, sources=tuple(sources),
    )
    config.validate()
    source = resolve_model_source(args.model)
    logger.info("Loading %s", source.describe())
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    result = extract_emotion_vectors(
        model, tokenizer, corpus, config, keep_story_means=not args.no_validate,
        progress=not args.no_progress, model_description=source.describe(),
    )
    vectors = result.vectors
    report = None
    if not args.no_validate:
        classifier = None
        if args.reply_agreement:
            from emoreg.textemotion import TextEmotionClassifier

            classifier = TextEmotionClassifier.from_pretrained()
        report = build_validation_report(result, model, tokenizer, goemotions_path=args.goemotions,
                                         valence_path=args.valence, reply_classifier=classifier,
                                         progress=not args.no_progress)
        vectors.validation = summarize(report)
    out = Path(args.out)
    vectors.save_pretrained(out)
    if report is not None:
        write_validation_report(report, out)
    print(f"Saved {vectors!r} to {out} ({result.tokens} tokens in {result.seconds:.1f} s)")
    if vectors.validation:
        for key, value in vectors.validation.items():
            print(f"  {key}: {value}")
    return 0
