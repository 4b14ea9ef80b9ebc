"""Masking (pretrain/masking.py): rates over 100k tokens, 80/10/10, static vs dynamic, specials, whole words."""

import random

import numpy as np
import pytest
import torch
import transformers as tf

from transferlab.models.common import minilm_path
from transferlab.pretrain.masking import IGNORE, draw, select
from transferlab.pretrain.mlm import MLMBatches, encode_corpus
from transferlab.pretrain.spec import MaskingSpec

WORDS = ["the", "movie", "plot", "actor", "was", "really", "quite", "a", "story", "film", "scene", "and",
         "unbelievably", "extraordinary", "misunderstanding", "photosynthesis", "of", "it", ",", "."]


@pytest.fixture(scope="module")
def tokenizer():
    return tf.AutoTokenizer.from_pretrained(minilm_path())


def texts(n: int, seed: int = 0, lo: int = 6, hi: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def shares(batches: MLMBatches, batch_size: int = 64):
    """Counts over one pass through the corpus, checking every batch on the way."""
    corpus, c = batches.corpus, {"cand": 0, "masked": 0, "mask": 0, "random": 0, "kept": 0}
    for start in range(0, len(corpus), batch_size):
        index = np.arange(start, min(start + batch_size, len(corpus)))
        b = batches(index)
        width = b["input_ids"].shape[1]
        orig = torch.from_numpy(corpus.ids[index, :width])
        cand = torch.from_numpy(corpus.candidates[index, :width])
        masked = b["labels"] != IGNORE
        assert not (masked & ~cand).any()  # special tokens and padding are never predicted
        assert torch.equal(b["input_ids"][~cand], orig[~cand])  # ... nor changed
        assert torch.equal(b["labels"][masked], orig[masked])
        assert bool((masked.sum(1) >= 1).all())  # at least one masked token per sequence
        inp = b["input_ids"][masked]
        c["cand"] += int(cand.sum())
        c["masked"] += int(masked.sum())
        c["mask"] += int((inp == batches.mask_id).sum())
        c["kept"] += int((inp == orig[masked]).sum())
        c["random"] += int(((inp != batches.mask_id) & (inp != orig[masked])).sum())
    return c


@pytest.mark.parametrize("rate, mask_ratio, random_ratio", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3)])
@pytest.mark.parametrize("strategy", ["static", "dynamic"])
def test_rates_within_one_percent_over_100k_tokens(tokenizer, rate, mask_ratio, random_ratio, strategy):
    spec = MaskingSpec(rate=rate, mask_ratio=mask_ratio, random_ratio=random_ratio, strategy=strategy)
    corpus = encode_corpus(tokenizer, texts(3500), max_length=64)
    c = shares(MLMBatches(corpus, tokenizer, spec, seed=0))
    assert 100_000 <= c["cand"] < 120_000
    observed = {"rate": c["masked"] / c["cand"], "mask": c["mask"] / c["masked"],
                "random": c["random"] / c["masked"], "kept": c["kept"] / c["masked"]}
    expected = {"rate": rate, "mask": mask_ratio, "random": random_ratio, "kept": 1 - mask_ratio - random_ratio}
    for key, want in expected.items():  # within 1% of the configured value, relative (10% -> 9.9-10.1%)
        assert abs(observed[key] - want) <= 0.01 * want, (key, observed[key], want)


def test_dynamic_masks_change_across_epochs_and_static_ones_do_not(tokenizer):
    corpus = encode_corpus(tokenizer, texts(200, seed=1), max_length=64)
    index = np.arange(len(corpus))
    for strategy, same in (("static", True), ("dynamic", False)):
        batches = MLMBatches(corpus, tokenizer, MaskingSpec(strategy=strategy), seed=3)
        epochs = [batches(np.random.default_rng(e).permutation(index)) for e in range(3)]
        # put every epoch's rows back in example order
        rows = [b["labels"][np.argsort(np.random.default_rng(e).permutation(index))] for e, b in enumerate(epochs)]
        assert torch.equal(rows[0], rows[1]) == same and torch.equal(rows[1], rows[2]) == same
    # static masks are a function of the seed only
    a = MLMBatches(corpus, tokenizer, MaskingSpec(strategy="static"), seed=3)(index)
    b = MLMBatches(corpus, tokenizer, MaskingSpec(strategy="static"), seed=3)(index)
    c = MLMBatches(corpus, tokenizer, MaskingSpec(strategy="static"), seed=4)(index)
    assert torch.equal(a["labels"], b["labels"]) and not torch.equal(a["labels"], c["labels"])


def test_whole_word_masking_takes_every_piece_of_a_word(tokenizer):
    corpus = encode_corpus(tokenizer, texts(3000, seed=2, lo=20, hi=40), max_length=96, whole_word=True)
    assert (corpus.word_ids >= 0).sum() == corpus.candidates.sum()
    split_words = 0
    batches = MLMBatches(corpus, tokenizer, MaskingSpec(whole_word=True, strategy="static"), seed=0)
    b = batches(np.arange(len(corpus)))
    masked = (b["labels"] != IGNORE).numpy()
    width = masked.shape[1]
    words = corpus.word_ids[:, :width]
    for row in range(len(corpus)):
        for w in np.unique(words[row][words[row] >= 0]):
            chosen = masked[row][words[row] == w]
            assert chosen.all() or not chosen.any()
            split_words += len(chosen) > 1 and chosen.all()
    assert split_words > 100  # multi-piece words were masked whole
    rate = masked.sum() / corpus.candidates.sum()
    assert abs(rate - 0.15) < 0.01


def test_one_token_sequences_still_get_a_mask_and_nothing_else_is_touched():
    g = torch.Generator().manual_seed(0)
    cand = torch.zeros(500, 8, dtype=torch.bool)
    cand[:, 1] = True  # one maskable token, rate * 1 = 0.15 < 1
    masked = select(cand, 0.15, g)
    assert torch.equal(masked, cand)
    masks = draw(cand, MaskingSpec(), g, n_choices=10)
    assert torch.equal(masks.masked, cand) and not (masks.to_mask & masks.to_random).any()
    assert not ((masks.to_mask | masks.to_random) & ~masks.masked).any()


def test_bad_masking_spec_names_the_field():
    from transferlab.errors import SpecError

    with pytest.raises(SpecError, match="masking.rate"):
        MaskingSpec(rate=0.0)
    with pytest.raises(SpecError, match="exceeds 1"):
        MaskingSpec(mask_ratio=0.8, random_ratio=0.3)
