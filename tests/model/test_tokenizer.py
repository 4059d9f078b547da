"""SalmonnTokenizer against the official (transformers 4.28 slow LlamaTokenizer + [PAD]) outputs."""

import pytest
import torch

from tests.helpers.golden import Golden
from salmonn_pl.model.tokenizer import SalmonnTokenizer


def _tokenizer(golden: Golden) -> SalmonnTokenizer:
    return SalmonnTokenizer(golden.file("llama_path"))


def test_special_ids_and_length(golden: Golden):
    tok = _tokenizer(golden)
    assert tok.pad_token_id == golden.variant["pad_token_id"]
    assert len(tok) == golden.variant["len_tokenizer"]
    assert tok.encode("<s></s><unk>[PAD]") == [tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id]


def test_tokenizer_cases(golden: Golden):
    tok = _tokenizer(golden)
    cases = golden.manifest["info"]["tokenizer_cases"]
    assert cases
    for case in cases:
        ids = tok.encode(case["text"], add_special_tokens=case["add_special_tokens"])
        assert ids == case["ids"], case["text"]
        assert tok.convert_ids_to_tokens(ids) == case["pieces"], case["text"]
        if not case["add_special_tokens"]:
            assert tok.tokenize(case["text"]) == case["pieces"], case["text"]


def test_prompt_halves_match_official_ids(golden: Golden):
    tok = _tokenizer(golden)
    for i, wav in enumerate(golden.wavs):
        before, after = golden.prompt(i).split("<SpeechHere>")
        assert tok.encode(before) == golden[f"wav{i}.prompt_before_ids"].tolist(), wav["name"]
        assert tok.encode(after) == golden[f"wav{i}.prompt_after_ids"].tolist(), wav["name"]


def test_decode_reproduces_official_texts(golden: Golden):
    tok = _tokenizer(golden)
    assert tok.batch_decode(golden["batch.gen_greedy_ids"]) == golden.variant["batch_greedy_texts"]
    for i, wav in enumerate(golden.wavs):
        expected = golden.variant["wavs"][wav["name"]]
        assert tok.decode(golden[f"wav{i}.gen_greedy_ids"]) == expected["greedy_text"], wav["name"]
        assert tok.decode(golden[f"wav{i}.gen_beam4_ids"]) == expected["beam4_text"], wav["name"]


def test_skip_special_tokens_leaves_sentencepiece_text(golden: Golden):
    tok = _tokenizer(golden)
    for row in golden["batch.gen_greedy_ids"].tolist():
        plain = [i for i in row if i not in tok.special_ids]
        assert tok.decode(row, skip_special_tokens=True) == tok.sp.decode(plain)


def test_batch_encode_pads_both_sides(golden: Golden):
    tok = _tokenizer(golden)
    texts = [golden.prompt(i).split("<SpeechHere>")[1] for i in range(len(golden.wavs))]
    rows = [tok.encode(t) for t in texts]
    longest = max(len(r) for r in rows)
    for side in ("right", "left"):
        ids, mask = tok.batch_encode(texts, padding_side=side)
        assert ids.shape == mask.shape == (len(texts), longest)
        assert ids.dtype == mask.dtype == torch.long
        for i, row in enumerate(rows):
            valid = mask[i].bool()
            assert ids[i][valid].tolist() == row
            assert (ids[i][~valid] == tok.pad_token_id).all()
            first_valid = int(valid.nonzero()[0])
            assert first_valid == (0 if side == "right" else longest - len(row))
    ids, mask = tok.batch_encode(texts, max_length=7)
    assert ids.shape == (len(texts), 7)
    assert ids.tolist() == [r[:7] for r in rows]


def test_bad_padding_side(golden: Golden):
    with pytest.raises(ValueError, match="padding_side"):
        _tokenizer(golden).batch_encode(["a"], padding_side="middle")


def test_missing_tokenizer_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        SalmonnTokenizer(tmp_path)
