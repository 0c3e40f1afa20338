#!/usr/bin/env bash
# Re-extract the shipped bundle (emoreg/data/vectors/smollm2-135m-instruct) exactly as it was made.
# Needs the public GoEmotions Ekman files in ../shared/data/goemotions_ekman (train: the labelled source;
# dev: the transfer check only, never used to choose the recipe) and network access to PyPI for the
# valence ratings (scripts/fetch_valence_ratings.sh). About 20 minutes on 2 CPU cores.
# The recipe (sources, layer, denoising) was chosen on GoEmotions train and the story corpus alone:
# see scripts/select_extraction_variant.py and VARIANTS.md next to the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
GO="${GOEMOTIONS_DIR:-../shared/data/goemotions_ekman}"
OUT="${1:-emoreg/data/vectors/smollm2-135m-instruct}"
VALENCE="$(bash scripts/fetch_valence_ratings.sh)"
.venv/bin/emoreg extract --model default --out "$OUT" \
    --sources stories,dialogues,labelled \
    --labelled "$GO/ekman_train.tsv" --labelled-format goemotions --labelled-per-label 500 \
    --default-layer 18 --pca-variance 0.5 --batch-size 16 \
    --goemotions "$GO/ekman_dev.tsv" --valence "$VALENCE" --reply-agreement
