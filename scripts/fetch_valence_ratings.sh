#!/usr/bin/env bash
# Fetch human valence ratings for the validation report: the VADER ground-truth sentence sets
# (Hutto & Gilbert 2014, MIT licence), shipped inside the vaderSentiment sdist on PyPI.
# Usage: bash scripts/fetch_valence_ratings.sh [DIR]   (default: $EMOREG_CACHE/valence or ~/.cache/emoreg/valence)
# Prints the path of tweets_GroundTruth.txt (4,200 tweets, each the mean rating of 20 people, -4..4).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${EMOREG_CACHE:-$HOME/.cache/emoreg}/valence}"
TARGET="$DIR/hutto_ICWSM_2014/tweets_GroundTruth.txt"
if [ ! -f "$TARGET" ]; then
    mkdir -p "$DIR"
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: "vaderSentiment==3.3.2" -d "$TMP" >&2
    tar -xzf "$TMP"/vaderSentiment-3.3.2.tar.gz -C "$TMP"
    tar -xzf "$TMP"/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz -C "$DIR"
    cp "$TMP"/vaderSentiment-3.3.2/LICENSE.txt "$DIR/LICENSE.vaderSentiment.txt"
fi
echo "$TARGET"
