"""Reading and checking LLM training data (JSONL) before any model or tokenizer loads.

Three record shapes are accepted, one per line, and may be mixed:
- plain text:   {"text": "..."}                              (loss on every token)
- instruction:  {"instruction": "...", "input": "...", "output": "..."}   (loss on `output` only)
- chat:         {"messages": [{"role": "user", "content": "..."}, ...]}   (loss on assistant turns)
Every problem is reported as a `DatasetError` naming the file and line number, so a user can fix
the line instead of reading a traceback from deep inside tokenisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_trainer.errors import DatasetError

TEXT, INSTRUCTION, CHAT = "text", "instruction", "chat"
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Record:
    """One validated training example and where it came from (for error messages)."""

    kind: str
    source: str
    line: int
    text: str = ""
    instruction: str = ""
    input: str = ""
    output: str = ""
    messages: tuple[tuple[str, str], ...] = ()


def jsonl_files(path: str | Path, field: str = "train_data_dir") -> list[Path]:
    """The .jsonl files a data path names: the file itself, or every .jsonl in a folder (sorted)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() not in (".jsonl", ".json"):
            raise DatasetError(f"{field}: {p} is not a .jsonl file; text-generation data is JSON Lines "
                               "(one {\"text\": ...} or instruction/messages object per line)")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.jsonl") if f.is_file())
        if not files:
            raise DatasetError(f"{field}: folder {p} holds no .jsonl files; put JSON Lines data there "
                               "(one {\"text\": ...} object per line)")
        return files
    raise DatasetError(f"{field}: {p} does not exist; give a .jsonl file or a folder of .jsonl files")


def _need_str(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = obj.get(key, "" if not required else None)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise DatasetError(f"{where}: \"{key}\" is {kind}")
    return value


def parse_record(obj: Any, source: str, line: int) -> Record:
    """Validate one decoded JSON value; raise DatasetError saying what the line must look like."""
    where = f"{source} line {line}"
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object like {{\"text\": ...}}, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DatasetError(f"{where}: \"messages\" must be a non-empty list of {{role, content}} objects")
        out: list[tuple[str, str]] = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                    or not isinstance(m.get("content"), str):
                raise DatasetError(f"{where}: messages[{i}] must be an object with string \"role\" and "
                                   "\"content\"")
            if m["role"] not in ROLES:
                raise DatasetError(f"{where}: messages[{i}] has role \"{m['role']}\"; use one of "
                                   f"{', '.join(ROLES)}")
            out.append((m["role"], m["content"]))
        if not any(role == "assistant" and content for role, content in out):
            raise DatasetError(f"{where}: \"messages\" has no non-empty assistant turn to learn from")
        return Record(CHAT, source, line, messages=tuple(out))
    if "instruction" in obj or "output" in obj:
        instruction = _need_str(obj, "instruction", where)
        output = _need_str(obj, "output", where)
        inp = _need_str(obj, "input", where, required=False)
        if not output.strip():
            raise DatasetError(f"{where}: \"output\" is empty; an instruction record needs a response")
        return Record(INSTRUCTION, source, line, instruction=instruction, input=inp, output=output)
    if "text" in obj:
        text = _need_str(obj, "text", where)
        if not text.strip():
            raise DatasetError(f"{where}: \"text\" is empty")
        return Record(TEXT, source, line, text=text)
    keys = ", ".join(sorted(obj)) or "none"
    raise DatasetError(f"{where}: unknown record (keys: {keys}); use {{\"text\": ...}}, "
                       "{\"instruction\", \"input\", \"output\"} or {\"messages\": [...]}")


def read_records(path: str | Path, field: str = "train_data_dir") -> list[Record]:
    """All records of a .jsonl file or folder; the first bad line raises with its file and number."""
    records: list[Record] = []
    for f in jsonl_files(path, field):
        try:
            lines = f.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{f}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{f} line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            records.append(parse_record(obj, str(f), n))
    if not records:
        raise DatasetError(f"{field}: {path} holds no records (all lines are empty)")
    return records
