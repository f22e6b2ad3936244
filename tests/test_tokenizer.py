"""k-mer tokenizer: DNABERT vocabulary order, save/load round trip, raw bp and k-mer text encoding."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genemask import kmers
from genemask.tokenizer import build_tokenizer, encode_sequences, save_tokenizer, tokenizer_k
from genemask.util import GeneMaskError


@pytest.fixture(scope="module")
def tok6():
    return build_tokenizer(6)


@functools.cache
def cached_tokenizer(k: int):
    return build_tokenizer(k)


def kmer_text(seq: str, k: int) -> str:
    return " ".join(seq[i : i + k] for i in range(len(seq) - k + 1))


def test_vocab_order_and_specials(tok6):
    assert len(tok6) == 4101
    ids = tok6.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                      "AAAAAA", "AAAAAT", "AAAAAC", "AAAAAG", "AAAATA", "GGGGGG"])
    assert ids == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 4100]
    assert (tok6.pad_token_id, tok6.unk_token_id, tok6.cls_token_id, tok6.sep_token_id, tok6.mask_token_id) == (
        0, 1, 2, 3, 4)
    assert tok6.model_max_length == 512
    vocab = tok6.get_vocab()
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])] == kmers.SPECIAL_TOKENS + kmers.all_kmers(6)


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_every_k(k):
    t = build_tokenizer(k)
    assert len(t) == kmers.vocab_size(k) and tokenizer_k(t) == k
    assert t.convert_tokens_to_ids("A" * k) == 5 and t.convert_tokens_to_ids("A" * (k - 1) + "T") == 6


def test_bad_k():
    with pytest.raises(GeneMaskError, match="k=7"):
        build_tokenizer(7)


@pytest.mark.parametrize("k", [3, 6])
def test_save_and_autotokenizer_round_trip(tmp_path, k):
    from transformers import AutoTokenizer, BertTokenizer

    t = build_tokenizer(k)
    save_tokenizer(t, tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "tokenizer_config.json").exists()
    vocab_txt = (tmp_path / "vocab.txt").read_text().splitlines()
    assert vocab_txt == kmers.SPECIAL_TOKENS + kmers.all_kmers(k)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer_k(loaded) == k
    assert loaded.init_kwargs["genemask_kmer"] == k
    assert len(loaded) == len(t) and loaded.model_max_length == 512
    assert loaded.all_special_ids and set(loaded.all_special_ids) == {0, 1, 2, 3, 4}
    rng = np.random.default_rng(k)
    seq = "".join(rng.choice(list("ACGT"), 40)) + "N" + "".join(rng.choice(list("ACGT"), 10))
    text = kmer_text(seq, k)
    a, b = t(text)["input_ids"], loaded(text)["input_ids"]
    assert a == b == [kmers.CLS] + kmers.seq_to_ids(seq, k).tolist() + [kmers.SEP]
    # DNABERT-style users: BertTokenizer on the same folder (vocab.txt, no lower-casing)
    bert = BertTokenizer.from_pretrained(str(tmp_path))
    assert bert(text)["input_ids"] == a
    assert torch.equal(encode_sequences(loaded, [seq])["input_ids"][0], torch.tensor(a))


def test_unk_for_non_acgt(tok6):
    seq = "ACGTACNGTACGTA"
    ids = encode_sequences(tok6, [seq])["input_ids"][0].tolist()
    toks = [seq[i : i + 6] for i in range(len(seq) - 5)]
    assert ids[1:-1] == [1 if "N" in s else tok6.convert_tokens_to_ids(s) for s in toks]
    assert tok6(kmer_text(seq, 6))["input_ids"] == ids


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ACGTacgtN", min_size=0, max_size=80), min_size=1, max_size=6),
       st.sampled_from([3, 4, 5, 6]), st.integers(2, 60))
def test_encode_sequences_matches_seq_to_ids(seqs, k, max_length):
    tok = cached_tokenizer(k)
    out = encode_sequences(k, seqs, max_length=max_length)
    ids, att = out["input_ids"], out["attention_mask"]
    assert ids.dtype == torch.long and ids.shape[0] == len(seqs) and ids.shape[1] <= max_length
    for i, s in enumerate(seqs):
        want = kmers.seq_to_ids(s, k)[: max_length - 2].tolist()
        row = ids[i].tolist()
        n = len(want)
        assert row[: n + 2] == [kmers.CLS] + want + [kmers.SEP]
        assert all(x == kmers.PAD for x in row[n + 2 :])
        assert att[i].tolist() == [1] * (n + 2) + [0] * (len(row) - n - 2)
        if len(s) >= k:  # k-mer text: same ids through encode_sequences and the fast tokenizer
            text = kmer_text(s.upper(), k)
            assert encode_sequences(k, [text], max_length=max_length)["input_ids"][0, : n + 2].tolist() == row[: n + 2]
            full = tok(text)["input_ids"]
            assert full[: n + 1] == row[: n + 1]


def test_padding_modes_and_errors(tok6):
    out = encode_sequences(tok6, ["A" * 20, "C" * 8], max_length=512, padding="max_length")
    assert out["input_ids"].shape == (2, 512)
    assert out["input_ids"][0, :17].tolist() == [2] + [5] * 15 + [3]
    assert encode_sequences(6, ["A" * 600])["input_ids"].shape == (1, 512)
    with pytest.raises(GeneMaskError, match="not a 6-mer"):
        encode_sequences(6, ["AAAAAA AAA"])
    with pytest.raises(GeneMaskError, match="padding"):
        encode_sequences(6, ["AAAAAA"], padding="nope")


def test_kmerize_feeds_auto_tokenizer_the_same_ids_as_encode_sequences(tmp_path):
    from transformers import AutoTokenizer

    from genemask.tokenizer import build_tokenizer, encode_sequences, kmerize, save_tokenizer

    assert kmerize("acgtac", 3) == "ACG CGT GTA TAC" and kmerize("AC", 3) == "" and kmerize(b"ACGT", 4) == "ACGT"
    save_tokenizer(build_tokenizer(6), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    seq = "GATTACAGATTACACCGGTTAANCGT"
    assert tok(seq)["input_ids"] == [2, 1, 3]  # raw bases: [CLS] [UNK] [SEP], the trap the card warns of
    assert tok(kmerize(seq, 6))["input_ids"] == encode_sequences(6, [seq])["input_ids"][0].tolist()
