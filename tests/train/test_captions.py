"""Training captions: what the text encoder cannot read is said, once."""

from __future__ import annotations


def test_captions_longer_than_the_text_encoder_reads_are_one_notice(recwarn):
    from fashionsd_x.models.tokenizer import clip_tokenizer
    from fashionsd_x.notices import Notice
    from fashionsd_x.train.data import warn_long_captions

    long_caption = " ".join(["pleated"] * 100)
    warn_long_captions(["a red dress", long_caption, None, long_caption], clip_tokenizer())
    [notice] = [warning for warning in recwarn if warning.category is Notice]
    assert str(notice.message).startswith("2 of 4 training captions are longer than the text encoder's 77 tokens")
