"""Bulk caption edits over a whole dataset, with a journal so the last one can be undone.

Before touching anything the journal (`<root>/.lora_trainer/caption_undo.json`) records the old
content of every caption file the edit will change, with state "applying"; after the edit it
records the new content and state "done". If the process dies mid-edit, `undo_last` still puts
every file back. Undo skips files edited by hand since the bulk edit (their content differs from
what the edit wrote) and says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_trainer.data.tools.atomic import atomic_write_text, remove_file
from lora_trainer.data.tools.store import CaptionStore
from lora_trainer.data.tools.tags import dedupe, join_tags, norm_tag, put_first, split_tags
from lora_trainer.errors import UserError

JOURNAL = Path(".lora_trainer") / "caption_undo.json"


@dataclass
class BulkResult:
    action: str
    changed: int
    total: int
    skipped: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = f"{self.action}: {self.changed} of {self.total} captions changed"
        if self.skipped:
            text += f"; {len(self.skipped)} left as they are (edited since): {', '.join(self.skipped[:5])}"
        return text


def journal_path(root: str | os.PathLike) -> Path:
    return Path(root) / JOURNAL


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def _rel(store: CaptionStore, path: Path) -> str:
    try:
        return path.relative_to(store.root).as_posix()
    except ValueError:
        return str(path)


def _apply(store: CaptionStore, action: str, edit: Callable[[list[str]], list[str]],
           include_uncaptioned: bool = False) -> BulkResult:
    images = store.images(refresh=True)
    plan: dict[Path, str] = {}
    for image in images:
        old = store.get(image)
        if old is None and not include_uncaptioned:
            continue
        new = join_tags(edit(split_tags(old)))
        if new != (old or ""):
            plan[image] = new
    if not plan:
        return BulkResult(action, 0, len(images))
    files = [store.txt_path(i) for i in plan] if store.uses_txt else []
    if store.uses_csv:
        files.append(store.csv_path)
    entries = [{"path": _rel(store, f), "before": _read(f)} for f in files]
    journal = journal_path(store.root)
    journal.parent.mkdir(exist_ok=True)
    record = {"action": action, "state": "applying", "files": entries}
    atomic_write_text(journal, json.dumps(record, ensure_ascii=False))
    for image, caption in plan.items():
        store.set(image, caption)
    store.flush()
    for entry, path in zip(entries, files, strict=True):
        entry["after"] = _read(path)
    record["state"] = "done"
    atomic_write_text(journal, json.dumps(record, ensure_ascii=False))
    return BulkResult(action, len(plan), len(images))


def add_trigger(store: CaptionStore, trigger: str, include_uncaptioned: bool = False) -> BulkResult:
    """Put the trigger word(s) first in every caption (moved there if already present)."""
    first = split_tags(trigger)
    if not first:
        raise UserError("trigger word is empty: type the word that should start every caption")
    return _apply(store, f"add trigger '{trigger}'", lambda tags: put_first(tags, first), include_uncaptioned)


def replace_tag(store: CaptionStore, old: str, new: str) -> BulkResult:
    """Replace a tag everywhere (matched ignoring case, spacing and `_`); empty `new` removes it."""
    if not old.strip():
        raise UserError("tag to replace is empty: type the tag as it appears in the captions")
    key = norm_tag(old)
    replacement = split_tags(new)

    def edit(tags: list[str]) -> list[str]:
        out: list[str] = []
        for tag in tags:
            out.extend(replacement if norm_tag(tag) == key else [tag])
        return dedupe(out)

    return _apply(store, f"replace '{old}' with '{new}'" if replacement else f"remove '{old}'", edit)


def remove_tag(store: CaptionStore, tag: str) -> BulkResult:
    """Remove a tag from every caption."""
    return replace_tag(store, tag, "")


def can_undo(root: str | os.PathLike) -> str | None:
    """The action the undo would revert, or None."""
    path = journal_path(root)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("action", "bulk edit")
    except (OSError, ValueError):
        return None


def undo_last(root: str | os.PathLike) -> BulkResult:
    """Restore the caption files changed by the last bulk edit (also after a crash mid-edit)."""
    root = Path(root)
    path = journal_path(root)
    if not path.exists():
        raise UserError(f"nothing to undo in '{root}': no bulk edit was recorded there")
    record = json.loads(path.read_text(encoding="utf-8"))
    finished = record.get("state") == "done"
    restored, skipped = 0, []
    for entry in record["files"]:
        target = Path(entry["path"])
        target = target if target.is_absolute() else root / target
        current = _read(target)
        if finished and current != entry.get("after"):
            skipped.append(entry["path"])
            continue
        if current != entry["before"]:
            if entry["before"] is None:
                remove_file(target)
            else:
                atomic_write_text(target, entry["before"])
            restored += 1
    remove_file(path)
    return BulkResult(f"undo {record.get('action', 'bulk edit')}", restored, len(record["files"]), skipped)
