"""The synthetic data set and the tiny tokenizer."""

from __future__ import annotations

import numpy as np

from lora_trainer import synthetic
from lora_trainer.models.tiny_tokenizer import make_tokenizer


def test_deterministic_and_varied():
    a, b = synthetic.varied_sample(7), synthetic.varied_sample(7)
    assert a.caption == b.caption and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.image.size == (64, 64)
    caps = {s.caption for s in synthetic.varied_set(40)}
    assert len(caps) > 30


def test_concepts_lie_outside_the_varied_set():
    words = {w.strip(",") for s in synthetic.varied_set(300) for w in s.caption.split()}
    for concept in synthetic.CONCEPTS:
        s = synthetic.concept_sample(concept, 0)
        assert s.caption.startswith(synthetic.CONCEPTS[concept])
        assert not ({w.strip(",") for w in synthetic.CONCEPTS[concept].split()} & words)
    z0, z1 = synthetic.concept_sample("zqx", 0, seed=1), synthetic.concept_sample("zqx", 0, seed=2)
    assert not np.array_equal(np.asarray(z0.image), np.asarray(z1.image))  # train/held-out splits differ


def test_to_tensor_and_write_dataset(tmp_path):
    t = synthetic.to_tensor([synthetic.varied_sample(0).image])
    assert t.shape == (1, 3, 64, 64) and float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    d = synthetic.write_dataset(str(tmp_path), synthetic.concept_set("zqx", 3), repeats=5, name="zqx")
    assert d.endswith("5_zqx") and sorted(p.name for p in tmp_path.joinpath("5_zqx").iterdir())[:2] == \
        ["0000.png", "0000.txt"]


def test_tokenizer_words_are_single_tokens():
    tok = make_tokenizer(synthetic.VOCABULARY)
    ids = tok("zqx checker star").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 5
    assert len(tok("unknownword").input_ids) > 3  # unknown words still tokenize, as characters
