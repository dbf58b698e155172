"""JSONL validation (file + line in every error) and loss masking, with the test tokenizer."""

from __future__ import annotations

import json

import pytest

from lora_trainer.errors import DatasetError
from lora_trainer.llm.encode import IGNORE, encode_record, encode_records
from lora_trainer.llm.records import CHAT, INSTRUCTION, TEXT, Record, read_records
from tests.llm.conftest import make_tokenizer, write_jsonl


def test_reads_all_three_shapes_from_a_folder(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "n1 n2"}, {"instruction": "count", "output": "n1"}])
    (tmp_path / "b.jsonl").write_text('\n{"messages": [{"role": "user", "content": "hello"}, '
                                      '{"role": "assistant", "content": "bye"}]}\n', encoding="utf-8")
    kinds = [r.kind for r in read_records(tmp_path)]
    assert kinds == [TEXT, INSTRUCTION, CHAT]


@pytest.mark.parametrize("line, needle", [
    ('{"text": "ok"', "invalid JSON"),
    ('["text"]', "expected a JSON object"),
    ('{"prompt": "x"}', "unknown record (keys: prompt)"),
    ('{"text": 3}', "\"text\" is a int, not a string"),
    ('{"text": "  "}', "\"text\" is empty"),
    ('{"instruction": "x", "output": ""}', "\"output\" is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no non-empty assistant turn"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "role \"bot\""),
])
def test_bad_line_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "n1"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        read_records(path)
    assert f"{path} line 3" in str(err.value)
    assert needle in str(err.value)


def test_missing_or_empty_data(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no .jsonl files"):
        read_records(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a .jsonl file"):
        read_records(tmp_path / "x.txt")


def _labelled_text(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])


def test_text_records_learn_every_token_and_end_with_eos():
    tok = make_tokenizer()
    ids, labels = encode_record(Record(TEXT, "f", 1, text="count n1 n2"), tok)
    assert ids[-1] == tok.eos_token_id and ids == labels


def test_instruction_without_template_masks_the_prompt():
    tok = make_tokenizer(chat=False)
    ids, labels = encode_record(Record(INSTRUCTION, "f", 1, instruction="count", input="n3", output="n4 n5"), tok)
    assert _labelled_text(tok, ids, labels).split() == ["n4", "n5", "</s>"]
    assert labels[: len(ids) - 3] == [IGNORE] * (len(ids) - 3)


def test_chat_masks_everything_but_assistant_turns():
    tok = make_tokenizer()
    rec = Record(CHAT, "f", 1, messages=(("system", "hello"), ("user", "n1"), ("assistant", "n2 n3"),
                                         ("user", "n4"), ("assistant", "n5")))
    ids, labels = encode_record(rec, tok)
    assert tok.decode(ids).split()[:3] == ["<s>", "system", ":"]
    # exactly the two assistant contents and their end-of-turn markers carry loss
    assert _labelled_text(tok, ids, labels).split() == ["n2", "n3", "</s>", "n5", "</s>"]
    rendered = tok.apply_chat_template([{"role": r, "content": c} for r, c in rec.messages], tokenize=False)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]


def test_instruction_uses_chat_template_when_present():
    tok = make_tokenizer()
    ids, labels = encode_record(Record(INSTRUCTION, "f", 1, instruction="count", output="n1"), tok)
    assert tok.decode(ids).split() == ["<s>", "user", ":", "count", "</s>", "assistant", ":", "n1", "</s>"]
    assert _labelled_text(tok, ids, labels).split() == ["n1", "</s>"]


def test_chat_without_any_template_is_a_clear_error():
    tok = make_tokenizer(chat=False)
    rec = Record(CHAT, "data.jsonl", 9, messages=(("user", "n1"), ("assistant", "n2")))
    with pytest.raises(DatasetError, match=r"data.jsonl line 9: .*chat_template: chatml"):
        encode_record(rec, tok)


def test_packing_and_truncation():
    tok = make_tokenizer()
    recs = [Record(TEXT, "f", i, text=" ".join(f"n{j}" for j in range(i, i + 12))) for i in range(10)]
    packed = encode_records(recs, tok, max_seq_length=16, packing=True)
    assert all(len(ids) == 16 for ids, _ in packed.examples[:-1])
    assert packed.tokens == 10 * 13
    cut = encode_records(recs, tok, max_seq_length=8, packing=False)
    assert cut.truncated == 10 and all(len(ids) == 8 for ids, _ in cut.examples)


def test_prompt_longer_than_limit_is_skipped_and_all_skipped_is_an_error():
    tok = make_tokenizer(chat=False)
    long = Record(INSTRUCTION, "f", 4, instruction=" ".join(["count"] * 40), output="n1")
    with pytest.raises(DatasetError, match="no example has any response tokens"):
        encode_records([long], tok, max_seq_length=16)
    ok = encode_records([long, Record(TEXT, "f", 5, text="n1 n2")], tok, max_seq_length=16)
    assert len(ok.examples) == 1 and "f line 4" in ok.skipped[0]
    json.dumps(ok.skipped)


def test_ids_match_whole_text_tokenisation_with_a_sentencepiece_style_tokenizer():
    """Metaspace (SentencePiece-like) tokenizers encode a piece differently alone ("▁Bon") than after
    a newline; training must use the ids inference sees, with the mask following the response text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                                  pre_tokenizers.Metaspace(prepend_scheme="first")])
    core.decoder = decoders.Metaspace(prepend_scheme="first")
    corpus = ["### Instruction:\nTranslate\n\n### Response:\nBonjour le monde", "Bonjour", "le monde"] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    rec = Record(INSTRUCTION, "f", 1, instruction="Translate", output="Bonjour le monde")
    ids, labels = encode_record(rec, tok)
    prompt = "### Instruction:\nTranslate\n\n### Response:\n"
    assert ids[:-1] == tok(prompt + rec.output, add_special_tokens=False)["input_ids"]
    assert tok(rec.output, add_special_tokens=False)["input_ids"] != ids[-1 - len(tok(rec.output)["input_ids"]):-1]
    learned = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    assert learned == "Bonjour le monde</s>"
