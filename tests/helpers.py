"""Small builders shared by the vector tests: a synthetic corpus the tiny models can read."""

from __future__ import annotations

from emoreg.vectors.corpus import Corpus, NeutralText, Story

_FRAGMENTS = {
    "happy": ["sunny picnic laughter songs", "won the prize danced grinning", "party cake balloons cheering"],
    "sad": ["funeral empty chair tears", "lost dog bowl crying floor", "rain grey letter goodbye forever"],
    "afraid": ["footsteps dark alley running", "bear trail frozen trembling", "storm cellar door banging night"],
}


def synthetic_corpus(emotions=("happy", "sad", "afraid"), topics=("home", "work", "park", "school"),
                     neutral_count: int = 6) -> Corpus:
    """Stories whose words differ by emotion (so even a random model separates them) over several topics."""
    stories = []
    for emotion in emotions:
        fragments = _FRAGMENTS.get(emotion, [f"{emotion} words here", f"more {emotion} text", f"{emotion} again"])
        for t, topic in enumerate(topics):
            for k, fragment in enumerate(fragments[:2]):
                text = f"At {topic} number {t}, {fragment}; again {fragment} and {fragment} story {k}."
                stories.append(Story(emotion=emotion, topic=topic, text=text))
    neutral = [
        NeutralText(f"User: What is {i} plus {i + 1}?\nAssistant: {i} plus {i + 1} is {2 * i + 1}.", topic=f"math{i}")
        for i in range(neutral_count)
    ]
    return Corpus(stories=stories, neutral=neutral)
