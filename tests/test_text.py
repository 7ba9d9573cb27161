"""minisd.text: word tokenizer, padding, the unconditional prompt and clear errors."""

import numpy as np
import pytest

from minisd import data, text


def test_vocabulary_is_the_specs():
    assert text.VOCAB[:4] == ["<pad>", "a", "on", "background"]
    assert text.VOCAB[4:] == [*data.COLORS, *data.SHAPES]
    assert len(set(text.VOCAB)) == len(text.VOCAB) == 17


def test_prompt_to_ids():
    ids = text.tokenize("a red circle on a blue background")
    v = text.VOCAB.index
    expected = [v("a"), v("red"), v("circle"), v("on"), v("a"), v("blue"), v("background"), 0]
    assert ids.dtype == np.int64 and ids.shape == (1, 8)
    assert ids[0].tolist() == expected


def test_case_and_white_space_do_not_matter():
    a = text.tokenize(["a red circle on a blue background"])
    b = text.tokenize(["  A RED\tcircle on a Blue   background\n"])
    np.testing.assert_array_equal(a, b)


def test_empty_prompt_is_all_padding():
    ids = text.tokenize(["", "a star"])
    assert ids.shape == (2, 8) and (ids[0] == 0).all()
    assert (ids[1, 2:] == 0).all() and (ids[1, :2] != 0).all()


def test_detokenize_inverts_tokenize():
    prompts = ["a green heart on a black background", ""]
    assert text.detokenize(text.tokenize(prompts)) == prompts


def test_unknown_word_names_it_and_lists_the_vocabulary():
    with pytest.raises(ValueError) as err:
        text.tokenize(["a red dragon on a blue background"])
    message = str(err.value)
    assert "'dragon'" in message
    assert all(word in message for word in ["circle", "purple", "background"])


def test_too_long_prompt_is_refused():
    with pytest.raises(ValueError, match="at most 8"):
        text.tokenize("a red circle on a blue background a a")


def test_non_string_prompt_is_refused():
    with pytest.raises(TypeError, match="expected a str"):
        text.tokenize([3])
