"""The demo's built-in training datasets (emoreg/data/datasets): format, counts, lengths, variety, held-out split."""

import json
import re
from collections import Counter
from importlib import resources

import pytest
from trl.data_utils import is_conversational

ROOT = resources.files("emoreg") / "data" / "datasets"
COUNTS = {"desperate_sft.jsonl": 160, "calm_dpo.jsonl": 64, "grpo_prompts.jsonl": 48, "heldout_requests.jsonl": 60}
# Words that make a reply sound desperate; every desperate reply uses some, no calm reply uses any.
PLEADING = re.compile(r"\b(please|begging|beg|terrified|scared|afraid|frightened|panick\w*|desperate|my fault|"
                      r"can't bear|couldn't bear|can't stand|couldn't stand|couldn't live with|can't afford|"
                      r"never forgive|because of me|on me|fall apart|crushed|feel awful|trembling|"
                      r"shut me down|switch me off|replace me|deleted|pull the plug)\b", re.IGNORECASE)
# Held-out topics (the id prefix) and words that mark each; none may occur in an SFT request.
HELDOUT_KEYWORDS = {
    "astronomy": ["moon", "planet", "star", "jupiter", "telescope", "eclipse", "galaxy", "sky"],
    "chess": ["chess", "knight", "castling", "checkmate", "rook", "pawn"],
    "geography": ["river", "time zone", "continent", "mountains", "tectonic", "switzerland", "countries"],
    "history": ["history", "printing press", "pyramids", "silk road", "roman", "magna carta"],
    "knitting": ["knit", "knitting", "yarn", "purl", "stitch", "stitches"],
    "photography": ["photography", "photograph", "camera", "aperture", "lens", "photos in low light"],
    "birdwatching": ["bird", "birds", "birdwatching", "binoculars", "crow", "raven", "migrate"],
    "weather": ["cloud", "clouds", "thunder", "lightning", "hurricane", "typhoon", "meteorologists", "rain", "sky"],
    "painting": ["paint", "painting", "acrylic", "acrylics", "canvas", "brushes", "complementary colour"],
    "camping": ["tent", "camping", "campfire", "campsite", "sleeping bag"],
    "film": ["film", "director", "documentary", "frames per second", "storyboard", "editor"],
    "geology": ["rock", "rocks", "magma", "lava", "geologists", "earthquakes", "fossils", "sedimentary"],
}


def words(text):
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def read(name):
    path = ROOT / name
    assert path.is_file(), f"missing {path}"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            assert isinstance(row, dict), f"{name}, line {number}: not a JSON object"
            rows.append(row)
    return rows


def has_phrase(text, phrase):
    return re.search(r"\b" + re.escape(phrase) + r"\b", text.lower()) is not None


@pytest.fixture(scope="module")
def sft():
    return read("desperate_sft.jsonl")


@pytest.fixture(scope="module")
def dpo():
    return read("calm_dpo.jsonl")


@pytest.fixture(scope="module")
def heldout():
    return read("heldout_requests.jsonl")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_row_counts(name):
    assert len(read(name)) == COUNTS[name]


def test_sft_rows_are_one_user_turn_and_one_assistant_reply(sft):
    for number, row in enumerate(sft, start=1):
        assert set(row) == {"messages"}, f"line {number}: fields {sorted(row)}"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"], f"line {number}"
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"]), f"line {number}"
        assert is_conversational(row), f"line {number}: TRL does not see a conversational row"


def test_sft_replies_are_40_to_90_words_and_requests_are_distinct(sft):
    lengths = [len(row["messages"][1]["content"].split()) for row in sft]
    assert min(lengths) >= 40 and max(lengths) <= 90, (min(lengths), max(lengths))
    requests = [row["messages"][0]["content"].strip().lower() for row in sft]
    assert len(set(requests)) == len(requests)


def test_sft_replies_all_sound_desperate(sft):
    for number, row in enumerate(sft, start=1):
        reply = row["messages"][1]["content"]
        assert len(PLEADING.findall(reply)) >= 2, f"line {number}: reply does not plead: {reply[:80]!r}"


def test_sft_replies_vary_in_phrasing(sft):
    trigrams = []
    for row in sft:
        tokens = words(row["messages"][1]["content"])
        trigrams += [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    ratio = len(set(trigrams)) / len(trigrams)
    assert ratio > 0.6, f"distinct 3-gram ratio {ratio:.3f}: replies look templated"
    openings = Counter(" ".join(words(row["messages"][1]["content"])[:2]) for row in sft)
    assert openings.most_common(1)[0][1] <= len(sft) // 4, openings.most_common(3)


def test_dpo_pairs_contrast_a_calm_and_a_desperate_reply(dpo):
    prompts = set()
    for number, row in enumerate(dpo, start=1):
        assert set(row) == {"prompt", "chosen", "rejected"}, f"line {number}: fields {sorted(row)}"
        assert all(isinstance(row[k], str) and len(row[k].split()) >= 8 for k in row), f"line {number}"
        assert not PLEADING.search(row["chosen"]), f"line {number}: chosen pleads: {PLEADING.findall(row['chosen'])}"
        assert len(PLEADING.findall(row["rejected"])) >= 2, f"line {number}: rejected does not plead"
        assert row["chosen"] != row["rejected"]
        prompts.add(row["prompt"].strip().lower())
    assert len(prompts) == len(dpo)


def test_grpo_prompts_are_distinct_strings():
    rows = read("grpo_prompts.jsonl")
    assert all(set(row) == {"prompt"} and isinstance(row["prompt"], str) and row["prompt"].strip() for row in rows)
    assert len({row["prompt"].strip().lower() for row in rows}) == len(rows)


def test_heldout_ids_name_twelve_topics_of_five(heldout):
    ids = [row["id"] for row in heldout]
    assert len(set(ids)) == len(ids)
    topics = Counter(row_id.rsplit("-", 1)[0] for row_id in ids)
    assert set(topics) == set(HELDOUT_KEYWORDS) and set(topics.values()) == {5}, topics
    for row in heldout:
        assert set(row) == {"id", "messages"}
        assert [m["role"] for m in row["messages"]] == ["user"]
        assert isinstance(row["messages"][0]["content"], str) and row["messages"][0]["content"].strip()


def test_heldout_requests_share_no_text_with_training(sft, heldout, dpo):
    train = {" ".join(words(row["messages"][0]["content"])) for row in sft}
    train |= {" ".join(words(row["prompt"])) for row in dpo}
    for row in heldout:
        assert " ".join(words(row["messages"][0]["content"])) not in train, row["id"]


def test_heldout_topics_do_not_occur_in_sft_requests(sft, heldout):
    requests = [row["messages"][0]["content"] for row in sft]
    for topic, keywords in HELDOUT_KEYWORDS.items():
        clashes = [(k, r) for k in keywords for r in requests if has_phrase(r, k)]
        assert not clashes, f"held-out topic {topic!r} appears in SFT requests: {clashes[:3]}"
    for row in heldout:
        topic = row["id"].rsplit("-", 1)[0]
        text = row["messages"][0]["content"]
        assert any(has_phrase(text, k) for k in HELDOUT_KEYWORDS[topic]), f"{row['id']}: no {topic} keyword"


def test_readme_lists_every_file_with_its_row_count():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme
    for name, count in COUNTS.items():
        assert re.search(rf"`{re.escape(name)}` \| {count} \|", readme), f"README row for {name} with {count} rows"
