"""Checks against the public data in ../shared/data (present in CI; said clearly when absent)."""

from pathlib import Path

import pytest

from emoreg.vectors.validation import read_goemotions_ekman

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GOEMOTIONS_DEV = SHARED / "goemotions_ekman" / "ekman_dev.tsv"


@pytest.mark.skipif(not GOEMOTIONS_DEV.is_file(), reason=f"public data not found at {GOEMOTIONS_DEV}")
def test_goemotions_dev_reads_as_the_validation_report_says():
    data = read_goemotions_ekman(GOEMOTIONS_DEV)
    assert len(data.texts) == 3354  # the row count in the shipped bundle's validation report
    counts = {e: data.labels.count(e) for e in set(data.labels)}
    assert counts == {"happy": 1941, "sad": 266, "afraid": 72, "angry": 555, "disgusted": 61, "surprised": 459}
    assert len(data.neutral) > 1000
