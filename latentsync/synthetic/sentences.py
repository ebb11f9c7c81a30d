"""Random English sentences from a small grammar: subject, verb, object and sometimes a place or
time. The words mix lip closures (b, m, p), rounded ("oo", "oh") and spread ("ee") vowels, so every
sentence moves the mouth in both of the track's degrees. About 300,000 distinct sentences.
"""

from __future__ import annotations

import numpy as np

SUBJECTS = (
    "the old man", "my sister", "a brown bear", "the teacher", "our neighbour", "Bob", "Mary",
    "the pilot", "a small boy", "the queen", "my mother", "the farmer", "Peter", "the baker",
    "a tall woman", "the police", "Emma", "the blue team", "my uncle", "the mayor", "Paul and Amy",
    "the doctor", "a sleepy cat", "the young poet", "Jim",
)
VERBS = (
    "bought", "painted", "moved", "found", "lifted", "washed", "opened", "carried", "dropped",
    "cleaned", "needed", "pushed", "watched", "kept", "sold", "loved", "borrowed", "remembered",
    "brought", "fixed", "measured", "wanted", "chose", "mapped",
)
OBJECTS = (
    "a blue boat", "the heavy box", "seven apples", "the map", "a warm coat", "the big piano",
    "two white sheep", "some fresh bread", "the moon", "a purple umbrella", "the green door",
    "my brother's bike", "a jar of honey", "the broken phone", "three cheap books", "the wooden spoon",
    "a bottle of milk", "the huge balloon", "my father's boots", "a basket of plums", "the team photo",
    "the cool pool", "a pair of gloves", "the yellow bus", "the beautiful mirror",
)
ENDINGS = (
    "", "", "", "", "in the morning", "near the beach", "before lunch", "every Monday",
    "at the zoo", "without a word", "on a rainy day", "by the window", "after school",
    "in the museum", "at noon", "with a smile", "in two minutes", "for the party", "under the bridge",
    "from the market", "to the moon and back", "beside the pool",
)


def random_sentence(rng: np.random.Generator) -> str:
    """One sentence, capitalised and ending with a full stop."""
    words = [str(rng.choice(SUBJECTS)), str(rng.choice(VERBS)), str(rng.choice(OBJECTS))]
    ending = str(rng.choice(ENDINGS))
    if ending:
        words.append(ending)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def unique_sentences(rng: np.random.Generator, count: int, used: set[str]) -> list[str]:
    """`count` sentences not in `used` (which they are added to)."""
    out = []
    while len(out) < count:
        sentence = random_sentence(rng)
        if sentence not in used:
            used.add(sentence)
            out.append(sentence)
    return out
