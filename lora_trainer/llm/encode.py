"""Turning validated records into token ids and loss labels.

Loss masking works on text segments: each record becomes a list of (text, trainable) pieces. The
joined text is tokenised once, exactly as at inference, and each token's label follows the segment
its characters fall in (fast tokenizers' offsets). Prompt tokens get label -100 (ignored by the loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_trainer.errors import ConfigError, DatasetError
from lora_trainer.llm.records import CHAT, INSTRUCTION, TEXT, Record

IGNORE = -100

# Used for instruction records when the tokenizer has no chat template (the widely used Alpaca layout).
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}


@dataclass
class Encoded:
    """Examples ready for batching, plus counts worth telling the user."""

    examples: list[tuple[Any, Any]]  # (input ids, labels) as int32 numpy arrays
    truncated: int = 0
    skipped: list[str] = field(default_factory=list)
    tokens: int = 0
    trainable_tokens: int = 0


def apply_chat_template_setting(tokenizer: Any, value: str | None) -> None:
    """Set the tokenizer's chat template from the config: a name ("chatml"), a .jinja file or Jinja text."""
    if not value:
        return
    if value in NAMED_TEMPLATES:
        tokenizer.chat_template = NAMED_TEMPLATES[value]
        return
    path = Path(value).expanduser()
    if path.suffix in (".jinja", ".j2", ".txt") or "{%" not in value and "{{" not in value:
        if not path.is_file():
            raise ConfigError("chat_template", f"{value} is neither a known name ({', '.join(NAMED_TEMPLATES)}),"
                              " an existing .jinja file, nor Jinja template text")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
        return
    tokenizer.chat_template = value


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: Any, messages: Sequence[tuple[str, str]], generation_prompt: bool) -> str:
    if not messages:
        return ""
    msgs = [{"role": r, "content": c} for r, c in messages]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts in front of plain text (usually BOS), since pieces are encoded bare."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return list(ids)


def _chat_segments(tokenizer: Any, messages: Sequence[tuple[str, str]], where: str) -> list[tuple[str, bool]]:
    """Split a rendered conversation into prompt / assistant pieces by rendering it turn by turn."""
    full = _render(tokenizer, messages, False)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for i, (role, _content) in enumerate(messages):
        if role != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before) and len(before) >= cursor):
            return _last_turn_segments(tokenizer, messages, full, where)
        segments += [(full[cursor:len(before)], False), (full[len(before):len(upto)], True)]
        cursor = len(upto)
    segments.append((full[cursor:], False))
    return [s for s in segments if s[0]]


def _last_turn_segments(tokenizer: Any, messages: Sequence[tuple[str, str]], full: str,
                        where: str) -> list[tuple[str, bool]]:
    """Fallback for templates that re-render earlier turns: learn only the final assistant turn."""
    if messages[-1][0] == "assistant":
        prompt = _render(tokenizer, messages[:-1], True)
        if full.startswith(prompt):
            return [(prompt, False), (full[len(prompt):], True)]
    raise DatasetError(f"{where}: the chat template does not render this conversation turn by turn, so the "
                       "assistant part cannot be found; end the conversation with an assistant turn or set "
                       "chat_template: chatml")


def record_segments(record: Record, tokenizer: Any) -> tuple[list[tuple[str, bool]], bool]:
    """(segments, add_leading_specials) for one record. Chat renders carry their own BOS."""
    where = f"{record.source} line {record.line}"
    if record.kind == TEXT:
        return [(record.text, True)], True
    if record.kind == INSTRUCTION:
        if has_chat_template(tokenizer):
            user = record.instruction + (f"\n\n{record.input}" if record.input else "")
            return _chat_segments(tokenizer, [("user", user), ("assistant", record.output)], where), False
        return [(format_instruction(record.instruction, record.input), False), (record.output, True)], True
    if record.kind == CHAT:
        if not has_chat_template(tokenizer):
            raise DatasetError(f"{where}: \"messages\" records need a chat template, and the base model's "
                               "tokenizer has none; set chat_template: chatml (or a .jinja file) in the config")
        return _chat_segments(tokenizer, record.messages, where), False
    raise DatasetError(f"{where}: unknown record kind {record.kind}")


def format_instruction(instruction: str, inp: str = "") -> str:
    """The prompt text for an instruction when no chat template exists (training and `generate`)."""
    if inp:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=inp)
    return ALPACA_PROMPT.format(instruction=instruction)


def _tokenize_segments(tokenizer: Any, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Tokenise the joined text once (the ids inference will see) and label by character spans.

    A token is learned when its last character lies in a trainable segment. Tokenizers without
    offsets (slow ones) fall back to tokenising each segment on its own."""
    if getattr(tokenizer, "is_fast", False):
        text = "".join(t for t, _ in segments)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        trainable = [False] * (len(text) + 1)
        cursor = 0
        for piece, learn in segments:
            if learn:
                trainable[cursor:cursor + len(piece)] = [True] * len(piece)
            cursor += len(piece)
        ids = list(enc["input_ids"])
        labels = [i if end > start and trainable[end - 1] else IGNORE
                  for i, (start, end) in zip(ids, enc["offset_mapping"], strict=True)]
        return ids, labels
    ids, labels = [], []
    for piece, learn in segments:
        piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
        ids += piece_ids
        labels += piece_ids if learn else [IGNORE] * len(piece_ids)
    return ids, labels


def encode_record(record: Record, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where no loss) for one record; plain text/instruction end with EOS."""
    segments, leading = record_segments(record, tokenizer)
    ids: list[int] = _leading_special_ids(tokenizer) if leading else []
    labels: list[int] = [IGNORE] * len(ids)
    body_ids, body_labels = _tokenize_segments(tokenizer, segments)
    ids += body_ids
    labels += body_labels
    eos = tokenizer.eos_token_id
    if leading and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)
    return ids, labels


def encode_records(records: Sequence[Record], tokenizer: Any, max_seq_length: int,
                   packing: bool = False) -> Encoded:
    """Encode all records; with packing, join them into one stream cut into max_seq_length blocks.

    Examples are kept as int32 numpy arrays (4 bytes a token, not a Python int object each), so a
    few hundred million training tokens fit in memory."""
    import numpy as np

    if max_seq_length < 8:
        raise ConfigError("max_seq_length", f"{max_seq_length} is too short; use 256-4096 tokens")
    out = Encoded(examples=[])
    stream: list[tuple[Any, Any]] = []
    for rec in records:
        ids, labels = encode_record(rec, tokenizer)
        if packing:
            stream.append((np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)))
            continue
        if len(ids) > max_seq_length:
            out.truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if all(lab == IGNORE for lab in labels[1:]):
            out.skipped.append(f"{rec.source} line {rec.line}: prompt fills max_seq_length, nothing to learn")
            continue
        out.examples.append((np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)))
    if packing and stream:
        all_ids = np.concatenate([i for i, _ in stream])
        all_labels = np.concatenate([lab for _, lab in stream])
        for start in range(0, len(all_ids), max_seq_length):
            ids, labels = all_ids[start:start + max_seq_length], all_labels[start:start + max_seq_length]
            if len(ids) > 1 and bool((labels[1:] != IGNORE).any()):
                out.examples.append((ids.copy(), labels.copy()))
    if not out.examples:
        raise DatasetError("train_data_dir: no example has any response tokens within max_seq_length "
                           f"({max_seq_length}); raise max_seq_length or shorten the prompts")
    out.tokens = int(sum(len(ids) for ids, _ in out.examples))
    out.trainable_tokens = int(sum((labels[1:] != IGNORE).sum() for _, labels in out.examples))
    return out
