"""The command line, end to end on a tiny model saved to disk."""

import json

import pytest

from emoreg import EmotionVectors
from emoreg.cli.common import parse_layers
from emoreg.cli.main import main
from emoreg.errors import ConfigError
from tests.helpers import synthetic_corpus
from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_llama().save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus = synthetic_corpus()
    stories = root / "stories.jsonl"
    stories.write_text("".join(json.dumps({"emotion": s.emotion, "topic": s.topic, "text": s.text}) + "\n"
                               for s in corpus.stories))
    neutral = root / "neutral.jsonl"
    neutral.write_text("".join(json.dumps({"text": t.text}) + "\n" for t in corpus.neutral))
    return stories, neutral


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, model_dir, corpus_files):
    out = tmp_path_factory.mktemp("bundle") / "vectors"
    stories, neutral = corpus_files
    code = main(["extract", "--model", str(model_dir), "--out", str(out), "--stories", str(stories),
                 "--no-builtin-stories", "--neutral", str(neutral), "--token-offset", "4", "--no-progress"])
    assert code == 0
    return out


def test_extract_writes_bundle_and_report(bundle_dir):
    names = {p.name for p in bundle_dir.iterdir()}
    assert {"vectors.safetensors", "bundle.json", "validation.json", "VALIDATION.md", "confusion.png"} <= names
    vectors = EmotionVectors.from_pretrained(bundle_dir)
    assert vectors.emotions == ["happy", "sad", "afraid"]
    assert vectors.extraction["token_offset"] == 4
    assert "heldout_topic_accuracy_default_layer" in vectors.validation


def test_inspect(bundle_dir, capsys):
    assert main(["inspect", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "emotions (3)" in out and "default layer" in out and "LlamaForCausalLM" in out
    assert "heldout_topic_accuracy_default_layer" in out
    assert main(["inspect", str(bundle_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["emotions"] == ["happy", "sad", "afraid"]


def test_scan(tmp_path, bundle_dir, model_dir):
    data = tmp_path / "data.csv"
    data.write_text("id,body\nx1,a sunny picnic\nx2,footsteps in the dark\n")
    out = tmp_path / "scores.jsonl"
    code = main(["scan", "--vectors", str(bundle_dir), "--data", str(data), "--text-field", "body",
                 "--out", str(out), "--model", str(model_dir), "--layer", "1", "--no-progress"])
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["x1", "x2"]
    assert set(lines[0]["projection"]) == {"happy", "sad", "afraid"} and lines[0]["layer"] == 1


def test_scan_missing_field_fails_cleanly(tmp_path, bundle_dir, model_dir, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"body": "x"}\n')
    out = tmp_path / "scores.jsonl"
    code = main(["scan", "--vectors", str(bundle_dir), "--data", str(data), "--out", str(out),
                 "--model", str(model_dir), "--no-progress"])
    assert code == 2
    assert "line 1: missing field 'text'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "0,9"], "out of range: the model has 4 decoder layers"),
        (["--emotions", "happy,smug"], "emotions ['smug'] have no stories"),
        (["--layers", "x"], "--layers: expected"),
        (["--sources", "stories,labelled"], "--sources includes 'labelled' but no --labelled FILE was given"),
        (["--sources", "stories,poems"], "--sources: unknown source(s) ['poems']"),
        (["--label-map", "joy"], "must look like LABEL=EMOTION"),
        (["--label-map", "joy=happy"], "--label-map only applies to --labelled FILE, which was not given"),
    ],
)
def test_extract_bad_input_exits_non_zero_and_writes_nothing(tmp_path, model_dir, corpus_files, capsys, args, message):
    stories, neutral = corpus_files
    out = tmp_path / "out"
    code = main(["extract", "--model", str(model_dir), "--out", str(out), "--stories", str(stories),
                 "--no-builtin-stories", "--neutral", str(neutral), "--no-progress", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_extract_from_dialogues_and_labelled_text(tmp_path, model_dir, corpus_files):
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("".join(
        json.dumps({"emotion": e, "topic": f"t{k}", "speaker": "assistant", "user": f"Question {k}?",
                    "assistant": f"{e} reply number {k}, said with feeling."}) + "\n"
        for e in ("happy", "sad") for k in range(2)))
    labelled = tmp_path / "l.csv"
    labelled.write_text("post,tag\nwe won the cup,joy\nbest day ever,joy\nshe left me,sadness\nall gone now,sadness\n"
                        "the bus is at nine,none\nflour and eggs,none\n")
    out = tmp_path / "v"
    code = main(["extract", "--model", str(model_dir), "--out", str(out), *_own_corpus(corpus_files),
                 "--dialogues", str(dialogues), "--labelled", str(labelled), "--text-field", "post",
                 "--label-field", "tag", "--label-map", "joy=happy,sadness=sad,none=neutral", "--no-validate"])
    assert code == 0
    vectors = EmotionVectors.from_pretrained(out)
    assert vectors.extraction["sources"] == ["stories", "dialogues", "labelled"]
    details = vectors.extraction["source_details"]
    assert details["dialogues"]["turns_read"] == {"user": 0, "assistant": 4}
    assert details["labelled"]["per_emotion"] == {"happy": 2, "sad": 2, "neutral": 2}
    assert details["labelled"]["label_map"] == {"joy": "happy", "sadness": "sad", "none": "neutral"}
    assert vectors.emotions == ["happy", "sad", "afraid"]


def test_malformed_corpus_file_names_the_line(tmp_path, model_dir, capsys):
    stories = tmp_path / "s.jsonl"
    stories.write_text('{"emotion": "happy", "text": "fine"}\n{"emotion": "sad"}\n')
    code = main(["extract", "--model", str(model_dir), "--out", str(tmp_path / "o"), "--stories", str(stories),
                 "--no-builtin-stories", "--no-progress"])
    assert code == 2
    assert "s.jsonl, line 2: missing field 'text'" in capsys.readouterr().err


def _own_corpus(corpus_files):
    stories, neutral = corpus_files
    return ["--stories", str(stories), "--no-builtin-stories", "--neutral", str(neutral), "--no-progress"]


def test_unknown_model_directory_and_gguf(tmp_path, capsys, corpus_files):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"not a gguf file")
    code = main(["extract", "--model", str(fake), "--out", str(tmp_path / "o"), *_own_corpus(corpus_files)])
    assert code == 2
    assert "could not load GGUF file" in capsys.readouterr().err
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    code = main(["extract", "--model", str(empty), "--out", str(tmp_path / "o"), *_own_corpus(corpus_files)])
    assert code == 2
    assert "no config.json" in capsys.readouterr().err


def test_unknown_hub_id_offline_names_the_default(tmp_path, capsys, monkeypatch, corpus_files):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["extract", "--model", "nobody/no-such-model-xyz", "--out", str(tmp_path / "o"),
                 *_own_corpus(corpus_files)])
    assert code == 2
    err = capsys.readouterr().err
    assert "could not find the model 'nobody/no-such-model-xyz'" in err and '"default"' in err


def test_inspect_missing_bundle(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no such vector bundle directory" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("extract", "inspect", "scan", "write-stories"))


def test_parse_layers():
    assert parse_layers("all") is None
    assert parse_layers("3,1-2") == [1, 2, 3]
    with pytest.raises(ConfigError):
        parse_layers("5-2")


def test_extract_out_refuses_what_is_not_a_bundle_before_any_work(tmp_path, corpus_files, capsys, monkeypatch):
    import emoreg.models.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load when --out is refused")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", no_model)
    stories, neutral = corpus_files
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("code")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    base = ["extract", "--model", "unused", "--stories", str(stories), "--no-builtin-stories", "--neutral",
            str(neutral), "--no-progress"]
    assert main([*base, "--out", str(project)]) == 2
    assert "is a non-empty directory that does not hold an emoreg bundle" in capsys.readouterr().err
    assert (project / "src" / "main.py").read_text() == "code"
    assert main([*base, "--out", str(notes), "--overwrite"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert notes.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]


def test_extract_out_on_an_existing_bundle_needs_overwrite(bundle_dir, corpus_files, capsys, monkeypatch):
    import emoreg.models.loading as loading

    monkeypatch.setattr(loading, "load_model_and_tokenizer", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    stories, neutral = corpus_files
    assert main(["extract", "--model", "unused", "--out", str(bundle_dir), "--stories", str(stories),
                 "--no-builtin-stories", "--neutral", str(neutral), "--no-progress"]) == 2
    assert "already holds an emoreg bundle; pass --overwrite" in capsys.readouterr().err


def test_too_few_stories_names_the_file_before_the_model_loads(tmp_path, corpus_files, capsys, monkeypatch):
    import emoreg.models.loading as loading

    monkeypatch.setattr(loading, "load_model_and_tokenizer", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    _, neutral = corpus_files
    stories = tmp_path / "one.jsonl"
    stories.write_text(json.dumps({"emotion": "happy", "text": "a sunny day"}) + "\n"
                       + json.dumps({"emotion": "sad", "text": "a grey day"}) + "\n")
    assert main(["extract", "--model", "unused", "--out", str(tmp_path / "o"), "--stories", str(stories),
                 "--no-builtin-stories", "--neutral", str(neutral), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "every emotion needs at least 2 stories" in err and f"(stories from {stories})" in err
