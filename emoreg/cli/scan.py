"""``emoreg scan``: score every row of a data file by emotion."""

from __future__ import annotations

import argparse
import logging

from emoreg.cli.common import add_model_arguments

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="score each row of a JSONL/CSV/TSV file by emotion (data flagging)",
        description="Write one JSON line per input row: its id (or index) and the mean projection of its tokens "
                    "(attention sinks excluded) on every emotion at one layer, raw and as z-scores against the "
                    "base model's statistics.",
    )
    parser.add_argument("--vectors", default="default", help="bundle directory or 'default' (default: %(default)s)")
    parser.add_argument("--data", required=True, help="input file (.jsonl, .csv or .tsv)")
    parser.add_argument("--text-field", default="text", help="field holding the text (default: %(default)s)")
    parser.add_argument("--id-field", default="id", help="field holding the row id; rows without it use their index")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--layer", type=int, help="layer to read (default: the bundle's default layer)")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default: %(default)s)")
    parser.add_argument("--max-length", type=int,
                        help="truncate rows to this many tokens (default: the model's context)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.models.loading import load_model_and_tokenizer
    from emoreg.utils.atomic import check_file_target
    from emoreg.vectors.bundle import EmotionVectors
    from emoreg.vectors.scan import read_scan_rows, scan_rows, write_scan

    check_file_target(args.out, "the scan output")
    vectors = EmotionVectors.from_pretrained(args.vectors)
    if args.layer is not None:
        vectors.layer_index(args.layer)
    rows = read_scan_rows(args.data, text_field=args.text_field, id_field=args.id_field)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype, device=args.device)
    results = scan_rows(model, tokenizer, vectors, rows, layer=args.layer, batch_size=args.batch_size,
                        max_length=args.max_length, progress=not args.no_progress)
    count = write_scan(results, args.out)
    print(f"Scored {count} rows at layer {args.layer if args.layer is not None else vectors.default_layer}; "
          f"wrote {args.out}")
    return 0
