"""Caption rules (pipeline/captioning/rules.py): word limit, boilerplate, refusals, empty answers."""
from __future__ import annotations

import pytest

from textok.pipeline.captioning.rules import clean_caption, count_words


def test_count_words_splits_on_any_whitespace():
    assert count_words("a  red\nfox\tin snow") == 5
    assert count_words("") == 0
    assert count_words(None) == 0


@pytest.mark.parametrize("raw, expected", [
    ("The image shows a red fox in snow.", "A red fox in snow."),
    ("This image depicts two cats on a sofa.", "Two cats on a sofa."),
    ("In this picture, a dog runs across a lawn.", "A dog runs across a lawn."),
    ("In the image, there are three boats.", "Three boats."),
    ("Caption: A tabby cat asleep.", "A tabby cat asleep."),
    ('**Caption:** "The photo shows a lighthouse at dusk."', "A lighthouse at dusk."),
    ("Sure! Here is a caption for the image: A blue kettle.", "A blue kettle."),
    ("“A bowl of ramen with egg.”", "A bowl of ramen with egg."),
    ("  A   bowl\n\nof  soup.  ", "A bowl of soup."),
    ("- A cat on a mat.", "A cat on a mat."),
    ("This is a photograph of a red barn.", "A red barn."),
])
def test_boilerplate_and_markup_are_stripped(raw, expected):
    caption, error, _ = clean_caption(raw)
    assert error is None
    assert caption == expected


def test_plain_captions_keep_their_case_and_text():
    # The template backend's output must pass untouched: "a photo of" carries meaning.
    assert clean_caption("a photo of a tench") == ("a photo of a tench", None, "")
    assert clean_caption("A sign reading I cannot stop.")[0] == "A sign reading I cannot stop."


@pytest.mark.parametrize("raw", [
    "I'm sorry, but I can't help with that.",
    "I cannot help with identifying people.",
    "I can't describe this image.",
    "As an AI, I do not see images.",
    "Sorry, I am unable to process this picture.",
    "Unfortunately, I cannot view the image.",
    "Caption: I'm unable to describe this.",
    "A nice scene, but as an AI language model I have no eyes.",
])
def test_refusals_are_failures_with_reason(raw):
    caption, error, message = clean_caption(raw)
    assert caption is None
    assert error == "refusal"
    assert message.startswith("answer is a refusal: ")


@pytest.mark.parametrize("raw", [None, "", "   \n\t ", '""', "**", "..."])
def test_empty_answers_are_failures(raw):
    caption, error, message = clean_caption(raw)
    assert caption is None and error == "empty" and message


def test_word_limit_cuts_at_last_sentence_boundary_inside_limit():
    first = " ".join(["alpha"] * 39) + " end."          # 40 words, a full sentence
    second = " ".join(["beta"] * 50) + " stop."         # would push it to 91 words
    caption, error, note = clean_caption(f"{first} {second}", max_words=75)
    assert error is None
    assert caption == first
    assert count_words(caption) == 40
    assert "cut from 91 to 40" in note


def test_word_limit_cuts_at_the_limit_when_no_usable_sentence_end():
    # The only sentence end comes after 5 words: keeping 5 of 75 would lose most detail.
    text = "Short opener here today. " + " ".join(f"w{i}," for i in range(100))
    caption, error, note = clean_caption(text, max_words=75)
    assert error is None
    assert count_words(caption) == 75
    assert caption.startswith("Short opener here today. w0,")
    assert not caption.endswith(",")  # trailing separator of the cut word dropped
    assert "limit 75" in note


def test_word_limit_is_configurable_and_validated():
    caption, _, _ = clean_caption("one two three four five six.", max_words=3)
    assert caption == "one two three"
    assert clean_caption("one two three.", max_words=3)[0] == "one two three."
    with pytest.raises(ValueError, match="max-words"):
        clean_caption("text", max_words=0)


def test_opener_removal_then_limit_counts_the_cleaned_text():
    caption, error, _ = clean_caption("The image shows " + " ".join(["word"] * 75) + ".", max_words=75)
    assert error is None
    assert count_words(caption) == 75
    assert caption.startswith("Word word")
