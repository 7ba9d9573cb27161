"""minisd's tokenizer: one token per word, from a fixed 17-word vocabulary.

Real Stable Diffusion uses CLIP's byte-pair tokenizer with 49 408 tokens; minisd's prompts only ever use
"a {color} {shape} on a {color} background", so a word list is enough and every id is easy to read.

    tokenize(["a red circle on a blue background"])  ->  int64 array (1, 8), padded with <pad> = 0
    tokenize("")                                      ->  all <pad>: the unconditional prompt for guidance
"""

import numpy as np

from minisd.data import COLORS, SHAPES

PAD = "<pad>"
VOCAB = [PAD, "a", "on", "background", *COLORS, *SHAPES]
MAX_LENGTH = 8
TOKEN_IDS = {word: i for i, word in enumerate(VOCAB)}


def tokenize(prompts):
    """A prompt or a list of prompts -> int64 token ids of shape (N, MAX_LENGTH)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = np.zeros((len(prompts), MAX_LENGTH), dtype=np.int64)  # 0 is <pad>
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {row} is a {type(prompt).__name__}, expected a str")
        words = prompt.lower().split()
        if len(words) > MAX_LENGTH:
            raise ValueError(f"prompt {prompt!r} has {len(words)} words; minisd reads at most {MAX_LENGTH}")
        for col, word in enumerate(words):
            if word not in TOKEN_IDS:
                raise ValueError(
                    f"unknown word {word!r} in prompt {prompt!r}; minisd knows only: {', '.join(VOCAB[1:])}"
                )
            ids[row, col] = TOKEN_IDS[word]
    return ids


def detokenize(ids):
    """Token ids (N, MAX_LENGTH) -> prompts, dropping <pad> (handy for reading a batch)."""
    return [" ".join(VOCAB[i] for i in row if i != 0) for row in np.asarray(ids)]
