"""minisd.text: the prompt sentence, the word tokenizer, padding, the unconditional prompt and clear errors."""

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


@pytest.mark.parametrize(
    "typed",
    [
        "a orange star on a blue background",
        "An orange star on a blue background.",
        "an orange star on an blue background!",
        "  A ORANGE\tStar on a  Blue background \n",
        "a orange star on a blue background .",
    ],
)
def test_the_obvious_variants_are_accepted(typed):
    canonical = "a orange star on a blue background"
    assert text.check_prompt(typed) == canonical
    np.testing.assert_array_equal(text.tokenize(typed), text.tokenize(canonical))


@pytest.mark.parametrize(
    "prompt,problem",
    [
        ("red circle", "does not follow minisd's sentence"),
        ("star heart", "does not follow minisd's sentence"),
        ("a red circle", "does not follow minisd's sentence"),
        ("a circle red on a blue background", "does not follow minisd's sentence"),
        ("a red circle on a blue background background", "does not follow minisd's sentence"),
        ("", "is empty"),
        ("   ", "is empty"),
    ],
)
def test_prompts_outside_the_sentence_are_refused_with_the_grammar_and_why(prompt, problem):
    with pytest.raises(ValueError) as err:
        text.check_prompt(prompt)
    message = str(err.value)
    assert f"prompt {prompt!r} {problem}" in message
    assert "a COLOR SHAPE on a COLOR background" in message and "trained on this one sentence only" in message
    assert all(word in message for word in [*data.COLORS, *data.SHAPES])


def test_a_shape_on_its_own_colour_is_refused():
    with pytest.raises(
        ValueError, match="puts a red shape on a red background: choose two different colours"
    ):
        text.check_prompt("a red circle on a red background")


def test_check_prompt_names_an_unknown_word():
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        text.check_prompt("a pink circle on a blue background")
    with pytest.raises(ValueError, match="unknown word '<pad>'"):
        text.check_prompt("a <pad> circle on a blue background")
    with pytest.raises(TypeError, match="a prompt is a str"):
        text.check_prompt(None)


def test_every_training_prompt_follows_the_sentence():
    _, prompts = data.make_batch(200, np.random.default_rng(0))
    assert [text.check_prompt(p) for p in prompts] == prompts
