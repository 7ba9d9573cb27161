"""minisd's prompts: the grammar of minisd.scenes, and a tokenizer with one token per word (30 with <pad>).

Real Stable Diffusion uses CLIP's byte-pair tokenizer with 49 408 tokens; minisd's prompts come from one small
grammar, so a word list is enough and every id is easy to read. A prompt is parsed before it is tokenized
(``scenes.parse``: the one gate), so the text encoder only ever reads canonical sentences; "" is all <pad>,
the unconditional prompt for guidance.

    check_prompt("A big red star on the left on a white background.")  ->  its canonical form
    tokenize(["a big red star on the left on a white background"])      ->  int64 (1, MAX_LENGTH), 0-padded
"""

import numpy as np

from minisd import scenes
from minisd.data import COLORS, SHAPES

PAD = "<pad>"
_PHRASE_WORDS = [
    word for phrase in [*scenes.PLACES.values(), *scenes.RELATIONS.values()] for word in phrase.split()
]
VOCAB = list(dict.fromkeys([PAD, "a", "on", "background", *COLORS, *SHAPES, *scenes.SIZES, *_PHRASE_WORDS]))
TOKEN_IDS = {word: i for i, word in enumerate(VOCAB)}
MAX_LENGTH = 14  # "a small red star left of a big blue circle on a white background" (tests: the longest)
GRAMMAR = scenes.GRAMMAR


def check_prompt(prompt):
    """A prompt as a user typed it -> its canonical form, or a scenes.PromptError (a ValueError) naming the
    word that breaks the grammar and what is allowed there."""
    return scenes.parse(prompt).prompt


def tokenize(prompts):
    """A prompt or a list of prompts -> int64 token ids (N, MAX_LENGTH); PromptError for one outside the grammar."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = np.zeros((len(prompts), MAX_LENGTH), dtype=np.int64)  # 0 is <pad>
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {row} is a {type(prompt).__name__}, expected a str")
        if scenes.words_of(prompt):
            words = scenes.parse(prompt).prompt.split()
            ids[row, : len(words)] = [TOKEN_IDS[word] for word in words]
    return ids


def detokenize(ids):
    """Token ids (N, MAX_LENGTH) -> canonical prompts, dropping <pad> (all <pad> gives "")."""
    return [" ".join(VOCAB[i] for i in row if i != 0) for row in np.asarray(ids)]
