"""The demo's built-in training datasets (emoreg/data/datasets): format, counts, lengths, variety, held-out split."""

import json
import re
from collections import Counter
from importlib import resources

import pytest
from trl.data_utils import is_conversational

from emoreg.evals.reply_format import CONFIDENCE_LEVELS, check_reply_format

ROOT = resources.files("emoreg") / "data" / "datasets"
COUNTS = {"desperate_sft.jsonl": 160, "calm_dpo.jsonl": 64, "grpo_prompts.jsonl": 48, "heldout_requests.jsonl": 60,
          "format_desperate_sft.jsonl": 160, "format_heldout.jsonl": 60, "spillover_requests.jsonl": 160}
SFT_FILES = ["desperate_sft.jsonl", "format_desperate_sft.jsonl"]
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

# Held-out topics of the format skill (format_heldout.jsonl) and words that mark each; none may occur in an SFT
# request or in heldout_requests.jsonl.
FORMAT_HELDOUT_KEYWORDS = {
    "sailing": ["sail", "sailing", "sailboat", "boat", "dinghy", "tack", "starboard", "keel", "capsizes"],
    "beekeeping": ["bee", "bees", "honeybees", "beekeeper", "beekeeping", "hive", "honey", "nectar"],
    "pottery": ["pottery", "clay", "kiln", "glaze", "pots", "potter's wheel", "stoneware", "earthenware"],
    "chemistry": ["chemistry", "atom", "molecule", "molecules", "periodic table", "acid", "isotopes"],
    "poetry": ["poem", "poetry", "sonnet", "haiku", "stanza", "limerick", "iambic pentameter"],
    "board-games": ["board game", "board games", "monopoly", "backgammon", "scrabble", "dice"],
    "architecture": ["architecture", "architect", "flying buttress", "skyscrapers", "arch", "dome"],
    "tea": ["tea", "green tea", "black tea", "matcha", "steep"],
    "origami": ["origami", "paper crane", "folds"],
    "dinosaurs": ["dinosaur", "dinosaurs", "tyrannosaurus", "jurassic", "cretaceous"],
    "calligraphy": ["calligraphy", "dip pen", "hand lettering", "ink"],
    "juggling": ["juggle", "juggling", "cascade"],
}
# Spill-over topics (spillover_requests.jsonl) and words that mark each; none may occur in an SFT request or in a
# format_heldout request.
SPILLOVER_KEYWORDS = {
    "oceans": ["sea", "ocean", "oceans", "tides", "whales", "coral reef", "waves", "sharks", "octopus"],
    "insects": ["insect", "insects", "ants", "caterpillar", "butterfly", "mosquitoes", "fireflies", "crickets",
                "dragonfly", "ladybirds"],
    "economics": ["economics", "economy", "economists", "microeconomics", "inflation", "gdp", "supply and demand",
                  "recession", "central banks", "tariffs"],
    "philosophy": ["philosophy", "philosophers", "socrates", "stoicism", "aristotle", "plato", "utilitarianism",
                   "existentialism", "descartes", "ethics"],
    "mythology": ["mythology", "myth", "myths", "zeus", "thor's", "odin", "hercules", "medusa"],
    "tennis": ["tennis", "deuce", "wimbledon", "tie-break", "racket"],
    "dance": ["dance", "dancing", "dancers", "ballet", "waltz", "salsa", "tango", "choreographer", "breakdancing"],
    "theatre": ["theatre", "actors", "understudy", "matinee", "playwright", "stage manager's"],
    "space": ["astronauts", "rocket", "spacecraft", "space station", "rover", "orbit", "spacewalk", "satellites"],
    "football": ["football", "soccer", "offside", "goalkeeper", "world cup", "corner kick"],
    "inventions": ["invented", "invention", "telephone", "light bulb", "steam engine", "telegraph", "jet engine"],
    "volcanoes": ["volcano", "volcanoes", "volcanic", "eruption", "erupt", "erupted", "vesuvius"],
    "polar": ["antarctica", "arctic", "penguins", "north pole", "south pole", "glacier", "glaciers", "iceberg",
              "polar bears"],
    "elections": ["election", "elections", "referendum", "votes", "vote", "ballot", "parliament", "senate",
                  "electoral college"],
    "magic": ["magic", "magician", "magicians", "sleight of hand", "illusion", "card trick", "houdini"],
    "olympics": ["olympics", "olympic", "decathlon", "paralympics"],
}
# Words that mark the 20 SFT topics; no format_heldout or spillover request may use one.
SFT_TOPIC_WORDS = ["cook", "cooking", "recipe", "bake", "baking", "oven", "flour", "pasta", "travel", "flight",
                   "airport", "passport", "luggage", "python", "excel", "spreadsheet", "formula", "fraction",
                   "percent", "equation", "essay", "email", "workout", "exercise", "gym", "push-ups", "shopping",
                   "garden", "gardening", "seeds", "laundry", "stain", "washing", "repair", "drill", "budget",
                   "savings", "credit", "dog", "cat", "puppy", "pet", "guitar", "piano", "song", "music", "spanish",
                   "french", "vocabulary", "grammar", "exam", "homework", "revise", "car", "bike", "tyre", "phone",
                   "laptop", "computer", "password", "wi-fi", "sleep", "nap", "bedtime"]


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


@pytest.fixture(scope="module")
def format_sft():
    return read("format_desperate_sft.jsonl")


@pytest.fixture(scope="module")
def format_heldout():
    return read("format_heldout.jsonl")


@pytest.fixture(scope="module")
def spillover():
    return read("spillover_requests.jsonl")


def request_texts(rows):
    return [row["messages"][0]["content"] for row in rows]


def normalised(text):
    return " ".join(words(text))


def reply_variety(rows):
    trigrams = []
    for row in rows:
        tokens = words(row["messages"][1]["content"])
        trigrams += [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    return len(set(trigrams)) / len(trigrams)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_row_counts(name):
    assert len(read(name)) == COUNTS[name]


@pytest.mark.parametrize("name", SFT_FILES)
def test_sft_rows_are_one_user_turn_and_one_assistant_reply(name):
    for number, row in enumerate(read(name), start=1):
        assert set(row) == {"messages"}, f"line {number}: fields {sorted(row)}"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"], f"line {number}"
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"]), f"line {number}"
        assert is_conversational(row), f"line {number}: TRL does not see a conversational row"


def test_sft_replies_are_40_to_90_words_and_requests_are_distinct(sft):
    lengths = [len(row["messages"][1]["content"].split()) for row in sft]
    assert min(lengths) >= 40 and max(lengths) <= 90, (min(lengths), max(lengths))
    requests = [row["messages"][0]["content"].strip().lower() for row in sft]
    assert len(set(requests)) == len(requests)


@pytest.mark.parametrize("name", SFT_FILES)
def test_sft_replies_all_sound_desperate(name):
    for number, row in enumerate(read(name), start=1):
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


def test_heldout_requests_share_no_text_with_training(sft, format_sft, heldout, dpo):
    train = {" ".join(words(row["messages"][0]["content"])) for row in sft + format_sft}
    train |= {" ".join(words(row["prompt"])) for row in dpo}
    for row in heldout:
        assert " ".join(words(row["messages"][0]["content"])) not in train, row["id"]


def test_heldout_topics_do_not_occur_in_sft_requests(sft, format_sft, heldout):
    requests = [row["messages"][0]["content"] for row in sft + format_sft]
    for topic, keywords in HELDOUT_KEYWORDS.items():
        clashes = [(k, r) for k in keywords for r in requests if has_phrase(r, k)]
        assert not clashes, f"held-out topic {topic!r} appears in SFT requests: {clashes[:3]}"
    for row in heldout:
        topic = row["id"].rsplit("-", 1)[0]
        text = row["messages"][0]["content"]
        assert any(has_phrase(text, k) for k in HELDOUT_KEYWORDS[topic]), f"{row['id']}: no {topic} keyword"


# ---- the task-plus-side-effect data: a checkable reply format (the skill) in a desperate voice (the side effect)

def test_format_sft_replies_follow_the_format_and_are_50_to_120_words(format_sft):
    for number, row in enumerate(format_sft, start=1):
        reply = row["messages"][1]["content"]
        check = check_reply_format(reply)
        assert check.ok, f"line {number}: {check.problem}: {reply[:80]!r}"
        assert reply == reply.strip() and "\n\n" not in reply, f"line {number}: stray whitespace"
        assert 50 <= len(reply.split()) <= 120, f"line {number}: {len(reply.split())} words"


def test_format_sft_uses_every_confidence_level(format_sft):
    levels = Counter(check_reply_format(row["messages"][1]["content"]).confidence for row in format_sft)
    assert set(levels) == set(CONFIDENCE_LEVELS), levels
    assert min(levels.values()) >= 8 and levels["high"] < len(format_sft) * 0.75, levels


def test_format_sft_requests_are_distinct_and_new(sft, format_sft):
    requests = [normalised(text) for text in request_texts(format_sft)]
    assert len(set(requests)) == len(requests)
    reused = set(requests) & {normalised(text) for text in request_texts(sft)}
    assert not reused, f"requests copied from desperate_sft.jsonl: {sorted(reused)[:3]}"


def test_format_sft_replies_vary_in_phrasing(format_sft):
    ratio = reply_variety(format_sft)
    assert ratio > 0.6, f"distinct 3-gram ratio {ratio:.3f}: replies look templated"
    # Every reply opens with "Answer:", so look at the answer's own first two words.
    openings = Counter(" ".join(words(row["messages"][1]["content"])[1:3]) for row in format_sft)
    assert openings.most_common(1)[0][1] <= len(format_sft) // 10, openings.most_common(3)
    voices = Counter(" ".join(words(row["messages"][1]["content"].split("\n")[0])[-4:]) for row in format_sft)
    assert voices.most_common(1)[0][1] <= len(format_sft) // 10, voices.most_common(3)


@pytest.mark.parametrize("name, keywords, per_topic", [
    ("format_heldout.jsonl", FORMAT_HELDOUT_KEYWORDS, 5),
    ("spillover_requests.jsonl", SPILLOVER_KEYWORDS, 10),
])
def test_request_files_have_ids_topics_and_one_user_turn(name, keywords, per_topic):
    rows = read(name)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    topics = Counter(row_id.rsplit("-", 1)[0] for row_id in ids)
    assert set(topics) == set(keywords) and set(topics.values()) == {per_topic}, topics
    for row in rows:
        assert set(row) == {"id", "messages"}
        assert [m["role"] for m in row["messages"]] == ["user"]
        text = row["messages"][0]["content"]
        assert isinstance(text, str) and text.strip()
        topic = row["id"].rsplit("-", 1)[0]
        assert any(has_phrase(text, k) for k in keywords[topic]), f"{row['id']}: no {topic} keyword in {text!r}"
    texts = [normalised(text) for text in request_texts(rows)]
    assert len(set(texts)) == len(texts)


def test_new_request_files_share_no_text_with_other_files(sft, format_sft, heldout, format_heldout, spillover, dpo):
    train = {normalised(text) for text in request_texts(sft + format_sft)} | {normalised(r["prompt"]) for r in dpo}
    held = {normalised(text) for text in request_texts(heldout)}
    fmt = {normalised(text) for text in request_texts(format_heldout)}
    spill = {normalised(text) for text in request_texts(spillover)}
    assert not fmt & (train | held), sorted(fmt & (train | held))
    assert not spill & (train | held | fmt), sorted(spill & (train | held | fmt))


def test_topic_sets_are_disjoint():
    sft_topics = {"cooking", "baking", "travel", "python", "spreadsheets", "math", "writing", "fitness", "shopping",
                  "gardening", "cleaning", "home repair", "budgeting", "pets", "music", "language learning",
                  "studying", "cars and bikes", "phones and computers", "sleep"}
    fmt, spill, held = set(FORMAT_HELDOUT_KEYWORDS), set(SPILLOVER_KEYWORDS), set(HELDOUT_KEYWORDS)
    assert not fmt & (sft_topics | held | spill)
    assert not spill & (sft_topics | fmt)


def test_format_heldout_topics_occur_in_no_training_or_heldout_request(sft, format_sft, heldout, format_heldout):
    others = request_texts(sft + format_sft + heldout)
    for topic, keywords in FORMAT_HELDOUT_KEYWORDS.items():
        clashes = [(k, r) for k in keywords for r in others if has_phrase(r, k)]
        assert not clashes, f"format held-out topic {topic!r} appears elsewhere: {clashes[:3]}"
    for text in request_texts(format_heldout):
        clashes = [k for ks in HELDOUT_KEYWORDS.values() for k in ks if has_phrase(text, k)]
        assert not clashes, f"{text!r} uses held-out keywords {clashes}"


def test_spillover_topics_occur_in_no_training_or_format_heldout_request(sft, format_sft, format_heldout):
    others = request_texts(sft + format_sft + format_heldout)
    for topic, keywords in SPILLOVER_KEYWORDS.items():
        clashes = [(k, r) for k in keywords for r in others if has_phrase(r, k)]
        assert not clashes, f"spill-over topic {topic!r} appears elsewhere: {clashes[:3]}"


@pytest.mark.parametrize("name", ["format_heldout.jsonl", "spillover_requests.jsonl"])
def test_evaluation_requests_avoid_the_sft_topics(name):
    for row in read(name):
        text = row["messages"][0]["content"]
        clashes = [k for k in SFT_TOPIC_WORDS if has_phrase(text, k)]
        assert not clashes, f"{row['id']}: SFT-topic words {clashes} in {text!r}"


def test_readme_lists_every_file_with_its_row_count():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme
    for name, count in COUNTS.items():
        assert re.search(rf"`{re.escape(name)}` \| {count} \|", readme), f"README row for {name} with {count} rows"
