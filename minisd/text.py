"""minisd's prompts: one sentence pattern, and a tokenizer with one token per word (17 words in all).

Real Stable Diffusion uses CLIP's byte-pair tokenizer with 49 408 tokens; minisd was trained on one sentence,
"a {color} {shape} on a {color} background", so a word list is enough and every id is easy to read.

    check_prompt("An orange star on a blue background.")  ->  "a orange star on a blue background"
    tokenize(["a red circle on a blue background"])      ->  int64 array (1, 8), padded with <pad> = 0
    tokenize("")                                          ->  all <pad>: the unconditional prompt for guidance
"""

import numpy as np

from minisd.data import COLORS, SHAPES

PAD = "<pad>"
VOCAB = [PAD, "a", "on", "background", *COLORS, *SHAPES]
MAX_LENGTH = 8
TOKEN_IDS = {word: i for i, word in enumerate(VOCAB)}
GRAMMAR = (
    f"'a COLOR SHAPE on a COLOR background' with two different colours; COLOR is one of {', '.join(COLORS)}; "
    f"SHAPE is one of {', '.join(SHAPES)}"
)
SENTENCE = ["a", COLORS, SHAPES, "on", "a", COLORS, "background"]  # a word, or the words allowed there
WHY = "minisd was trained on this one sentence only, so other wordings draw pictures they do not describe"


def words_of(prompt):
    """The words the model reads: case, spacing and a trailing full stop do not matter; "an" reads as "a"."""
    words = prompt.lower().strip().rstrip(".!").split()
    return ["a" if word == "an" else word for word in words]


def _check_words(prompt, words):
    for word in words:
        if word not in TOKEN_IDS or word == PAD:
            raise ValueError(
                f"unknown word {word!r} in prompt {prompt!r}; minisd knows only: {', '.join(VOCAB[1:])}"
            )


def check_prompt(prompt):
    """A prompt as a user typed it -> its canonical form, or a ValueError that says what minisd can draw and
    why. Stricter than ``tokenize``: the model reads any words, but only this sentence means a picture."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt is a str, not a {type(prompt).__name__}")
    words = words_of(prompt)
    _check_words(prompt, words)
    fits = len(words) == len(SENTENCE) and all(
        word == allowed if isinstance(allowed, str) else word in allowed
        for word, allowed in zip(words, SENTENCE, strict=True)
    )
    if not fits:
        problem = "is empty" if not words else "does not follow minisd's sentence"
        raise ValueError(f"prompt {prompt!r} {problem}: write {GRAMMAR} ({WHY})")
    color, background = words[1], words[5]
    if color == background:
        raise ValueError(
            f"prompt {prompt!r} puts a {color} shape on a {color} background: choose two different colours "
            "(no training image has one, and the shape would not show)"
        )
    return " ".join(words)


def tokenize(prompts):
    """A prompt or a list of prompts -> int64 token ids of shape (N, MAX_LENGTH)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = np.zeros((len(prompts), MAX_LENGTH), dtype=np.int64)  # 0 is <pad>
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {row} is a {type(prompt).__name__}, expected a str")
        words = words_of(prompt)
        if len(words) > MAX_LENGTH:
            raise ValueError(f"prompt {prompt!r} has {len(words)} words; minisd reads at most {MAX_LENGTH}")
        _check_words(prompt, words)
        ids[row, : len(words)] = [TOKEN_IDS[word] for word in words]
    return ids


def detokenize(ids):
    """Token ids (N, MAX_LENGTH) -> prompts, dropping <pad> (handy for reading a batch)."""
    return [" ".join(VOCAB[i] for i in row if i != 0) for row in np.asarray(ids)]
