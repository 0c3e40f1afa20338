"""``emoreg inspect``: print what a vector bundle holds."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="print what a vector bundle holds",
                                   description="Print a bundle's model, emotions, layers, settings and validation.")
    parser.add_argument("bundle", metavar="PATH_OR_NAME", help="a bundle directory, or 'default'")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emoreg.vectors.bundle import EmotionVectors

    vectors = EmotionVectors.from_pretrained(args.bundle)
    if args.json:
        print(json.dumps(vectors.metadata(), indent=2))
        return 0
    fp = vectors.model_fingerprint
    ext = vectors.extraction
    statistics = f"mean, std, percentiles {list(vectors.percentile_levels)}" if vectors.has_stats else "none"
    lines = [
        f"bundle:          {args.bundle}",
        f"library version: {vectors.library_version}",
        f"model:           {fp.describe() if fp else 'unknown'}",
        f"model source:    {ext.get('model', '') or 'unknown'}",
        f"emotions ({len(vectors.emotions)}):   {', '.join(vectors.emotions)}",
        f"layers ({len(vectors.layers)}):     {_ranges(vectors.layers)}",
        f"default layer:   {vectors.default_layer}",
        f"hidden size:     {vectors.hidden_size}",
        f"statistics:      {statistics}",
        f"corpus sha256:   {vectors.corpus_sha256 or 'unknown'}",
    ]
    if ext:
        settings = {k: ext[k] for k in ("token_offset", "sink_tokens", "pca_variance", "max_pcs", "max_length",
                                        "topics", "neutral_texts", "neutral_tokens", "tokens", "seconds") if k in ext}
        lines.append("extraction:      " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        pca = ext.get("neutral_pca", {}).get(str(vectors.default_layer))
        if pca:
            lines.append(f"neutral PCA:     {pca['components']} components removed at the default layer "
                         f"({pca['variance_explained']:.1%} of neutral variance)")
    if vectors.has_stats:
        stats = vectors.stats()
        lines.append(f"base statistics at layer {vectors.default_layer} (neutral text):")
        for i, emotion in enumerate(vectors.emotions):
            lines.append(f"  {emotion:<12} mean {float(stats.mean[i]):9.2f}  std {float(stats.std[i]):7.2f}")
    if vectors.validation:
        lines.append("validation:")
        lines += [f"  {k}: {v}" for k, v in vectors.validation.items()]
    else:
        lines.append("validation:      none recorded")
    print("\n".join(lines))
    return 0


def _ranges(values: list[int]) -> str:
    parts, start, prev = [], None, None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ", ".join(parts)
