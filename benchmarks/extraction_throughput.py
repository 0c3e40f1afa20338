"""Extraction throughput against a plain forward pass over the same batches, in the same run.

    python benchmarks/extraction_throughput.py [--model default] [--stories-per-emotion 10] [--rounds 3]

Runs, interleaved for ``--rounds`` rounds:
  * baseline: the model body (no LM head, as extraction runs it) over exactly the batches
    extraction feeds it (stories, then the neutral texts twice, batched per pass as extraction does), no hooks;
  * extraction: ``extract_emotion_vectors`` on the same corpus (hooks on every layer,
    running sums, PCA and statistics included).
Prints tokens per second for each and the overhead ratio (median over rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emoreg.models.loading import load_model_and_tokenizer
from emoreg.vectors.capture import backbone, tokenize_batches
from emoreg.vectors.corpus import Corpus, load_builtin_corpus
from emoreg.vectors.extraction import ExtractionConfig, extract_emotion_vectors


def plain_forward(model, tokenizer, passes: list[list[str]], config: ExtractionConfig) -> int:
    """The body's forward over each pass's batches, batched exactly as extraction batches them."""
    body = backbone(model)
    tokens = 0
    with torch.inference_mode():
        for texts in passes:
            for batch in tokenize_batches(tokenizer, texts, batch_size=config.batch_size,
                                          max_length=config.max_length):
                body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                tokens += int(batch.attention_mask.sum())
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--emotions", default="happy,sad,afraid,desperate,calm,angry")
    parser.add_argument("--stories-per-emotion", type=int, default=10)
    parser.add_argument("--neutral", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    full = load_builtin_corpus(args.emotions.split(","))
    stories = [s for e in full.emotions
               for s in [x for x in full.stories if x.emotion == e][: args.stories_per_emotion]]
    corpus = Corpus(stories=stories, neutral=full.neutral[: args.neutral])
    config = ExtractionConfig(batch_size=args.batch_size)
    neutral = [t.text for t in corpus.neutral]
    passes = [[s.text for s in corpus.stories], neutral, neutral]  # stories, neutral PCA, neutral statistics
    texts = [t for p in passes for t in p]

    plain_forward(model, tokenizer, [texts[: args.batch_size]], config)  # warm-up
    base_rates, ext_rates = [], []
    for round_index in range(args.rounds):
        start = time.perf_counter()
        tokens = plain_forward(model, tokenizer, passes, config)
        base_rates.append(tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        result = extract_emotion_vectors(model, tokenizer, corpus, config, progress=False)
        ext_rates.append(result.tokens / (time.perf_counter() - start))
        assert result.tokens == tokens, (result.tokens, tokens)
        print(f"round {round_index + 1}: plain {base_rates[-1]:8.0f} tok/s   extraction {ext_rates[-1]:8.0f} tok/s")
    base, ext = statistics.median(base_rates), statistics.median(ext_rates)
    print(f"\n{len(texts)} texts, {tokens} tokens per run, {torch.get_num_threads()} threads, model {args.model}")
    print(f"plain forward : {base:8.0f} tok/s (median of {args.rounds})")
    print(f"extraction    : {ext:8.0f} tok/s (median of {args.rounds})")
    print(f"overhead      : {base / ext - 1:+.1%} (time ratio extraction/plain = {base / ext:.3f})")


if __name__ == "__main__":
    main()
