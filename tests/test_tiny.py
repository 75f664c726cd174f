"""The tiny tokenizer is memoised; that is only correct because training it is deterministic."""

from kerasgemma import tiny_tokenizer as tiny


def test_tiny_tokenizer_training_is_deterministic():
    texts = ("问题：1+1？答案：2。", "Hello world, again.")
    cached = tiny.build_tiny_tokenizer_proto(texts, vocabulary_size=400)
    retrained = tiny._train_tiny_tokenizer.__wrapped__(texts, 400, tuple(tiny.TURN_PIECES + tiny.IMAGE_PIECES))
    assert retrained == cached, "SentencePiece training is not deterministic: the lru_cache in tiny_tokenizer.py is wrong"


def test_tiny_tokenizer_cache_keys_on_texts():
    one = tiny.build_tiny_tokenizer_proto(["甲乙丙"])
    assert tiny.build_tiny_tokenizer_proto(iter(["甲乙丙"])) is one  # any iterable of the same texts
    assert tiny.build_tiny_tokenizer_proto(["甲乙丙丁"]) != one
