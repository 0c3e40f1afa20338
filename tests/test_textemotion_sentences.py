"""emoreg.textemotion.sentences: splitting replies and stories into sentences."""

from emoreg.textemotion.sentences import split_sentences


def test_split_keeps_quotes_and_brackets_with_their_sentence():
    text = 'She ran. "Wait for me!" he shouted. Was it 3 a.m. already? (Yes.) 4 cats slept.'
    assert split_sentences(text) == ["She ran.", '"Wait for me!" he shouted.', "Was it 3 a.m. already?",
                                     "(Yes.)", "4 cats slept."]
    assert split_sentences('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]


def test_split_breaks_at_newlines_and_drops_empty_pieces():
    assert split_sentences("First line\n\nsecond line. Third one!") == ["First line", "second line.", "Third one!"]
    assert split_sentences("no end mark here") == ["no end mark here"]
    assert split_sentences("") == [] and split_sentences("  \n ") == []


def test_list_markers_and_numbers_join_the_next_sentence_or_are_dropped():
    from emoreg.textemotion.sentences import split_sentences

    reply = "Answer: Rinse it.\n1. Use cold water.\n2. Boil it. 3. Rest it!\n4.\nConfidence: high"
    assert split_sentences(reply) == ["Answer: Rinse it.", "1. Use cold water.", "2. Boil it.", "3. Rest it!",
                                      "Confidence: high"]
    assert split_sentences("- \n...\n12.") == []
