import pytest
import torch

from emoreg.errors import ConfigError, DataFormatError
from emoreg.models.layout import find_decoder_layers
from emoreg.vectors.capture import check_layers, forward_layers, tokenize_batches
from emoreg.vectors.corpus import Corpus, NeutralText, Story
from emoreg.vectors.extraction import ExtractionConfig, extract_emotion_vectors
from emoreg.vectors.tokens import content_mask, offset_mask
from tests.helpers import synthetic_corpus
from tests.tiny_models import make_tiny_model


def _hidden_states(model, tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return enc["attention_mask"], out.hidden_states


def test_vectors_match_a_direct_computation(tiny_llama, tiny_tokenizer):
    """The running-sum pipeline equals difference of means computed from full hidden states."""
    corpus = synthetic_corpus()
    config = ExtractionConfig(token_offset=5, pca_variance=0.0, batch_size=3)
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, config, progress=False)
    layer = 2
    emotions = corpus.emotions
    story_means = []
    for story in corpus.stories:
        mask, hidden = _hidden_states(tiny_llama, tiny_tokenizer, [story.text])
        selected = offset_mask(mask, 5)[0]
        story_means.append(hidden[layer + 1][0][selected].mean(0))
    story_means = torch.stack(story_means)
    labels = torch.tensor([emotions.index(s.emotion) for s in corpus.stories])
    per_emotion = torch.stack([story_means[labels == i].mean(0) for i in range(len(emotions))])
    expected = per_emotion - per_emotion.mean(0)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(result.vectors.directions(layer), expected, atol=1e-4, rtol=1e-4)


def test_statistics_exclude_the_sink_and_padding(tiny_llama, tiny_tokenizer):
    corpus = synthetic_corpus()
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, ExtractionConfig(pca_variance=0.0),
                                     progress=False)
    layer = 1
    texts = [t.text for t in corpus.neutral]
    projections = []
    for text in texts:
        mask, hidden = _hidden_states(tiny_llama, tiny_tokenizer, [text])
        projections.append(hidden[layer + 1][0][content_mask(mask)[0]] @ result.vectors.directions(layer).T)
    projections = torch.cat(projections)
    stats = result.vectors.stats(layer)
    torch.testing.assert_close(stats.mean, projections.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stats.std, projections.std(0, unbiased=False), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(stats.percentile(50), projections.quantile(0.5, dim=0), atol=1e-4, rtol=1e-4)
    assert result.vectors.extraction["neutral_tokens"] == projections.shape[0]


def test_padding_side_does_not_change_the_vectors(tiny_llama, tiny_tokenizer):
    from tests.tiny_models import make_tiny_tokenizer

    left = make_tiny_tokenizer()
    left.padding_side = "left"
    corpus = synthetic_corpus()
    config = ExtractionConfig(token_offset=4, pca_variance=0.3, batch_size=4)
    a = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, config, progress=False).vectors
    b = extract_emotion_vectors(tiny_llama, left, corpus, config, progress=False).vectors
    torch.testing.assert_close(a.all_directions(), b.all_directions(), atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(a.stats(3).mean, b.stats(3).mean, atol=1e-3, rtol=1e-3)


def test_denoising_projects_out_neutral_components(tiny_llama, tiny_tokenizer):
    corpus = synthetic_corpus()
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, ExtractionConfig(pca_variance=0.5),
                                     progress=False, keep_story_means=True)
    for layer in result.vectors.layers:
        basis = result.neutral_bases[layer]
        assert basis.shape[1] >= 1
        overlap = result.vectors.directions(layer) @ basis
        assert overlap.abs().max() < 1e-4
        report = result.vectors.extraction["neutral_pca"][str(layer)]
        assert report["components"] == basis.shape[1]
        assert report["variance_explained"] >= 0.5
    assert result.story_means.shape == (len(corpus.stories), 4, 64)


def test_max_pcs_caps_the_components(tiny_llama, tiny_tokenizer):
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(),
                                     ExtractionConfig(pca_variance=0.9, max_pcs=1), progress=False)
    assert all(v["components"] == 1 for v in result.vectors.extraction["neutral_pca"].values())


def test_layer_subset_and_default_layer(tiny_llama, tiny_tokenizer):
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(),
                                     ExtractionConfig(layers=[1, 3], default_layer=1), progress=False)
    assert result.vectors.layers == [1, 3] and result.vectors.default_layer == 1
    with pytest.raises(ConfigError, match="out of range: the model has 4 decoder layers"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), ExtractionConfig(layers=[4]),
                                progress=False)
    with pytest.raises(ConfigError, match="default_layer 2 is not among"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(),
                                ExtractionConfig(layers=[1, 3], default_layer=2), progress=False)


def test_bundle_records_provenance(tiny_llama, tiny_tokenizer):
    corpus = synthetic_corpus()
    vectors = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, progress=False,
                                      model_description="tiny").vectors
    assert vectors.corpus_sha256 == corpus.content_hash()
    assert vectors.model_fingerprint.hidden_size == 64
    assert vectors.extraction["model"] == "tiny"
    assert vectors.extraction["stories_per_emotion"] == {"happy": 8, "sad": 8, "afraid": 8}
    assert vectors.has_stats


@pytest.mark.parametrize("arch", ["gpt2", "gemma3", "gpt_neox"])
def test_other_architectures(arch, tiny_tokenizer):
    model = make_tiny_model(arch)
    vectors = extract_emotion_vectors(model, tiny_tokenizer, synthetic_corpus(), progress=False).vectors
    assert vectors.all_directions().shape == (4, 3, 64)
    assert torch.isfinite(vectors.stats(2).std).all()


def test_bad_config_values():
    for kwargs, message in [
        (dict(token_offset=-1), "token_offset"),
        (dict(batch_size=0), "batch_size"),
        (dict(pca_variance=1.0), "pca_variance"),
        (dict(percentiles=(5.0, 101.0)), "percentiles"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ExtractionConfig(**kwargs).validate()


def test_corpus_problems_are_reported(tiny_llama, tiny_tokenizer):
    one_emotion = Corpus([Story("a", "t", "some text here"), Story("a", "u", "more text here")],
                         [NeutralText("x y z"), NeutralText("a b c")])
    with pytest.raises(DataFormatError, match="at least 2 emotions"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, one_emotion, progress=False)
    no_neutral = Corpus(synthetic_corpus().stories, [])
    with pytest.raises(DataFormatError, match="neutral texts"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, no_neutral, progress=False)


def test_nan_activations_are_a_clear_error(tiny_llama, tiny_tokenizer):
    layer = find_decoder_layers(tiny_llama)[2]
    handle = layer.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with pytest.raises(DataFormatError, match="non-finite activations .* at layer 2"):
            extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(), progress=False)
    finally:
        handle.remove()


def test_hooks_are_removed_even_on_error(tiny_llama, tiny_tokenizer):
    layers = find_decoder_layers(tiny_llama)
    batch = next(tokenize_batches(tiny_tokenizer, ["hello there"], batch_size=1, max_length=32))

    def reducer(layer, hidden):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        forward_layers(tiny_llama, batch, [1], reducer)
    assert all(len(layer._forward_hooks) == 0 for layer in layers)


def test_forward_stops_after_the_last_requested_layer(tiny_llama, tiny_tokenizer):
    layers = find_decoder_layers(tiny_llama)
    calls = []
    handle = layers[3].register_forward_hook(lambda *a: calls.append(3))
    try:
        batch = next(tokenize_batches(tiny_tokenizer, ["hello there"], batch_size=1, max_length=32))
        forward_layers(tiny_llama, batch, [1], lambda layer, hidden: None)
    finally:
        handle.remove()
    assert calls == []


def test_truncation_is_flagged(tiny_tokenizer):
    batches = list(tokenize_batches(tiny_tokenizer, ["a" * 50, "b"], batch_size=2, max_length=10))
    assert batches[0].truncated == [True, False]
    assert batches[0].input_ids.shape[1] == 10


def test_check_layers_defaults_to_all(tiny_llama):
    assert check_layers(tiny_llama, None) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- several sources
def _dialogue_corpus():
    from emoreg.vectors.dialogues import Dialogue

    corpus = synthetic_corpus()
    replies = {"happy": "we won the prize, grinning all day", "sad": "the chair is empty and it rains",
               "afraid": "footsteps behind me in the dark"}
    dialogues = []
    for emotion, reply in replies.items():
        for k in range(2):
            dialogues.append(Dialogue(emotion, f"t{k}", "assistant", f"Question {k} about a plan?", f"{reply} {k}."))
            dialogues.append(Dialogue(emotion, f"t{k}", "user", f"User here: {reply}, twice {k}."))
    return corpus.with_dialogues(dialogues)


def _expected_unit_directions(means_by_emotion):
    means = torch.stack(means_by_emotion)
    raw = means - means.mean(0)
    return raw / raw.norm(dim=-1, keepdim=True)


def test_dialogue_directions_read_only_the_turn_tokens(tiny_llama, tiny_tokenizer):
    from emoreg.vectors.dialogues import render_dialogue

    corpus = _dialogue_corpus()
    config = ExtractionConfig(pca_variance=0.0, batch_size=4, sources=("dialogues",))
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, config, progress=False)
    layer = 2
    per_item = []
    for dialogue in corpus.dialogues:
        text, (start, end) = render_dialogue(tiny_tokenizer, dialogue)
        enc = tiny_tokenizer([text], add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
        inside = torch.tensor([[s >= start and e <= end and e > s for s, e in enc.pop("offset_mapping")[0].tolist()]])
        with torch.no_grad():
            hidden = tiny_llama(**enc, output_hidden_states=True).hidden_states[layer + 1]
        selected = inside & content_mask(enc["attention_mask"])
        per_item.append(hidden[0][selected[0]].mean(0))
    per_item = torch.stack(per_item)
    emotions = result.vectors.emotions
    labels = torch.tensor([emotions.index(d.emotion) for d in corpus.dialogues])
    expected = _expected_unit_directions([per_item[labels == i].mean(0) for i in range(len(emotions))])
    torch.testing.assert_close(result.vectors.directions(layer), expected, atol=1e-4, rtol=1e-4)
    details = result.vectors.extraction["source_details"]["dialogues"]
    assert details["examples"] == 12 and details["turns_read"] == {"user": 6, "assistant": 6}
    assert result.vectors.extraction["sources"] == ["dialogues"]


def test_labelled_directions_average_every_token_but_the_sink(tiny_llama, tiny_tokenizer):
    from emoreg.vectors.labelled import LabelledText

    texts = [LabelledText("happy", "so glad we won today"), LabelledText("happy", "best party ever, cake!"),
             LabelledText("sad", "the dog is gone"), LabelledText("sad", "rain and an empty room")]
    corpus = synthetic_corpus().with_labelled(texts, {"file": "x.jsonl"})
    config = ExtractionConfig(pca_variance=0.0, sources=("labelled",))
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, config, progress=False)
    layer = 1
    means = []
    for item in texts:
        mask, hidden = _hidden_states(tiny_llama, tiny_tokenizer, [item.text])
        means.append(hidden[layer + 1][0][content_mask(mask)[0]].mean(0))
    expected = _expected_unit_directions([(means[0] + means[1]) / 2, (means[2] + means[3]) / 2])
    assert result.vectors.emotions == ["happy", "sad"]
    torch.testing.assert_close(result.vectors.directions(layer), expected, atol=1e-4, rtol=1e-4)
    assert result.vectors.extraction["source_details"]["labelled"]["file"] == "x.jsonl"


def test_sources_combine_as_the_mean_of_their_unit_directions(tiny_llama, tiny_tokenizer):
    corpus = _dialogue_corpus()
    one = {name: extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus,
                                         ExtractionConfig(pca_variance=0.0, token_offset=5, sources=(name,)),
                                         progress=False).vectors for name in ("stories", "dialogues")}
    both = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus,
                                   ExtractionConfig(pca_variance=0.0, token_offset=5, sources=("stories", "dialogues")),
                                   progress=False)
    for layer in both.vectors.layers:
        total = one["stories"].directions(layer) + one["dialogues"].directions(layer)
        torch.testing.assert_close(both.vectors.directions(layer), total / total.norm(dim=-1, keepdim=True),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both.source_directions["dialogues"][both.vectors.layer_index(layer)],
                                   one["dialogues"].directions(layer), atol=1e-6, rtol=1e-6)
    assert both.source_emotions == {"stories": ["happy", "sad", "afraid"], "dialogues": ["happy", "sad", "afraid"]}


def test_an_emotion_in_one_source_only_keeps_that_sources_direction(tiny_llama, tiny_tokenizer):
    from emoreg.vectors.labelled import LabelledText

    texts = [LabelledText("happy", "so glad we won"), LabelledText("happy", "cake and songs"),
             LabelledText("bored", "nothing to do again"), LabelledText("bored", "the same grey hours")]
    corpus = synthetic_corpus().with_labelled(texts)
    both = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus,
                                   ExtractionConfig(pca_variance=0.0, sources=("stories", "labelled")), progress=False)
    labelled = both.source_directions["labelled"]
    assert both.vectors.emotions == ["happy", "sad", "afraid", "bored"]
    torch.testing.assert_close(both.vectors.all_directions()[:, 3], labelled[:, 1])


def test_source_errors(tiny_llama, tiny_tokenizer):
    with pytest.raises(ConfigError,
                       match=r"sources must be a non-empty subset of \['stories', 'dialogues', 'labelled'\]"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(),
                                ExtractionConfig(sources=("storys",)), progress=False)
    with pytest.raises(DataFormatError, match="the source 'dialogues' was selected but the corpus has no dialogues"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, synthetic_corpus(),
                                ExtractionConfig(sources=("stories", "dialogues")), progress=False)
    from emoreg.vectors.labelled import LabelledText

    corpus = synthetic_corpus().with_labelled([LabelledText("happy", "a b c d"), LabelledText("happy", "e f g h")])
    with pytest.raises(DataFormatError, match="at least 2 emotions per source; labelled has"):
        extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus, ExtractionConfig(sources=("labelled",)),
                                progress=False)


def test_labelled_neutral_rows_are_the_baseline_not_an_emotion(tiny_llama, tiny_tokenizer):
    from emoreg.vectors.labelled import LabelledText

    texts = [LabelledText("happy", "so glad we won today"), LabelledText("happy", "best party ever, cake!"),
             LabelledText("sad", "the dog is gone"), LabelledText("sad", "rain and an empty room"),
             LabelledText("neutral", "the bus leaves at nine"), LabelledText("neutral", "add two cups of flour")]
    corpus = synthetic_corpus().with_labelled(texts)
    result = extract_emotion_vectors(tiny_llama, tiny_tokenizer, corpus,
                                     ExtractionConfig(pca_variance=0.0, sources=("labelled",)), progress=False)
    assert result.vectors.emotions == ["happy", "sad"]
    layer = 2  # (hidden_states[-1] is after the final norm)
    means = []
    for item in texts:
        mask, hidden = _hidden_states(tiny_llama, tiny_tokenizer, [item.text])
        means.append(hidden[layer + 1][0][content_mask(mask)[0]].mean(0))
    baseline = (means[4] + means[5]) / 2
    expected = torch.stack([(means[0] + means[1]) / 2 - baseline, (means[2] + means[3]) / 2 - baseline])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(result.vectors.directions(layer), expected, atol=1e-4, rtol=1e-4)
    details = result.vectors.extraction["source_details"]["labelled"]
    assert details["baseline"] == "the mean of the rows labelled neutral" and details["per_emotion"]["neutral"] == 2
