"""A dataset captioned in prose by the tiny Florence-2 and LLaVA models: every mode and format,
the trigger word first, skip-existing idempotent, a corrupt image skipped and listed, and the
command line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from lora_trainer.caption import make_captioner, support
from lora_trainer.caption.base import CaptionStopped
from lora_trainer.caption.run import caption_dataset
from lora_trainer.cli import main
from lora_trainer.events import StopFlag

from .conftest import noise, solid
from .test_caption_run import snapshot

HAND = "A hand-written caption, kept."


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "10_cat").mkdir(parents=True)
    (root / "2_dog").mkdir()
    solid((255, 0, 0)).save(root / "10_cat" / "red.png")
    noise(7).save(root / "10_cat" / "noisy.jpg")
    noise(5).save(root / "2_dog" / "n1.webp")
    (root / "2_dog" / "n1.txt").write_text(HAND)
    (root / "2_dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return root


def florence(folder: Path, batch_size: int = 2):
    return make_captioner("florence2", model=str(folder), device="cpu", batch_size=batch_size, detail="detailed",
                          max_length=6, min_length=3, num_beams=1)


def csv_rows(root: Path) -> dict[str, str]:
    return {r["filename"]: r["prompt"] for r in csv.DictReader(io.StringIO((root / "metadata.csv").read_text()))}


def test_modes_in_txt_with_the_trigger_first(dataset, florence2_dir):
    captioner = florence(florence2_dir)
    events = []
    result = caption_dataset(dataset, captioner, mode="skip-existing", trigger="ohwx", emit=events.append)
    assert (result.total, result.captioned, result.skipped) == (4, 2, 1)
    assert result.failed == ["2_dog/broken.png"] and not (dataset / "2_dog/broken.txt").exists()
    assert any(e.type == "log" and "broken.png" in e.data["message"] for e in events)
    red, noisy = (dataset / "10_cat/red.txt").read_text(), (dataset / "10_cat/noisy.txt").read_text()
    assert red.startswith("ohwx, ") and noisy.startswith("ohwx, ") and red != noisy
    assert (dataset / "2_dog/n1.txt").read_text() == HAND
    progress = [e.data for e in events if e.type == "progress"]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 3 and progress[-1]["eta_s"] in (0, None)
    assert all(p["it_per_s"] > 0 for p in progress) and events[-1].type == "done"

    before = snapshot(dataset)
    again = caption_dataset(dataset, captioner, mode="skip-existing", trigger="ohwx")
    assert (again.captioned, again.written) == (0, 0) and snapshot(dataset) == before  # idempotent

    caption_dataset(dataset, captioner, mode="append", trigger="ohwx")
    appended = (dataset / "2_dog/n1.txt").read_text()
    assert appended.startswith("ohwx, " + HAND + " ") and appended.count("ohwx") == 1
    assert (dataset / "10_cat/red.txt").read_text() == red  # the same text is not added twice
    before = snapshot(dataset)
    assert caption_dataset(dataset, captioner, mode="append", trigger="ohwx").written == 0
    assert snapshot(dataset) == before

    caption_dataset(dataset, captioner, mode="overwrite")
    n1 = (dataset / "2_dog/n1.txt").read_text()
    assert HAND not in n1 and "ohwx" not in n1 and (dataset / "10_cat/red.txt").read_text() == red[len("ohwx, "):]


def test_csv_and_both_formats(dataset, florence2_dir):
    captioner = florence(florence2_dir, batch_size=3)
    caption_dataset(dataset, captioner, mode="overwrite", fmt="csv", trigger="ohwx")
    rows = csv_rows(dataset)
    assert sorted(rows) == ["10_cat/noisy.jpg", "10_cat/red.png", "2_dog/n1.webp"]
    assert all(p.startswith("ohwx, ") for p in rows.values())
    assert not (dataset / "10_cat/red.txt").exists() and (dataset / "2_dog/n1.txt").read_text() == HAND

    (dataset / "metadata.csv").unlink()
    caption_dataset(dataset, captioner, mode="skip-existing", fmt="both", trigger="ohwx")
    rows = csv_rows(dataset)
    assert rows["2_dog/n1.webp"] == HAND  # kept, and copied into the CSV
    assert rows["10_cat/red.png"] == (dataset / "10_cat/red.txt").read_text()
    before = snapshot(dataset)
    caption_dataset(dataset, captioner, mode="skip-existing", fmt="both", trigger="ohwx")
    assert snapshot(dataset) == before


def test_batch_size_does_not_change_the_captions(tmp_path, florence2_dir):
    roots = []
    for batch_size in (1, 3):
        root = tmp_path / f"b{batch_size}"
        root.mkdir()
        for i in range(3):
            noise(20 + i).save(root / f"{i}.png")
        caption_dataset(root, florence(florence2_dir, batch_size), mode="overwrite")
        roots.append(root)
    assert snapshot(roots[0]) == snapshot(roots[1])


def test_vlm_through_the_cli(dataset, llava_dir, capsys):
    args = ["caption", str(dataset), "--captioner", "vlm", "--model", str(llava_dir), "--detail", "short",
            "--format", "both", "--trigger", "ohwx", "--max-length", "6", "--min-length", "3", "--batch-size", "2",
            "--device", "cpu"]
    assert main(args) == 1  # the broken image is listed and makes the exit code 1
    captured = capsys.readouterr()
    assert "2 captioned" in captured.out and "1 unreadable" in captured.out and "broken.png" in captured.err
    red = (dataset / "10_cat/red.txt").read_text()
    assert red.startswith("ohwx, ") and csv_rows(dataset)["10_cat/red.png"] == red
    before = snapshot(dataset)
    assert main(args) == 1 and snapshot(dataset) == before


def test_cli_errors_for_prose_captioners_are_one_line(dataset, tmp_path, capsys):
    """Too old a transformers (the A1111 pins) is said first; otherwise the missing model."""
    assert main(["caption", str(dataset), "--captioner", "vlm"]) == 2
    assert main(["caption", str(dataset), "--captioner", "florence2", "--model", str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for line, name, expected in zip(lines, ("vlm", "florence2"),
                                    ("--captioner vlm needs --model", "Florence-2 captioner model"), strict=True):
        reason = support.unavailable_reason(name)
        assert line.startswith(f"error: {reason or expected}")


class StopAfterReads(StopFlag):
    """Reports a stop request from the n-th time it is asked: lands in the middle of generate()."""

    def __init__(self, reads: int) -> None:
        super().__init__()
        self.left = reads

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_stop_ends_generation_mid_batch_and_writes_nothing_of_it(tmp_path, florence2_dir):
    for i in range(3):
        noise(30 + i).save(tmp_path / f"{i}.png")
    captioner = make_captioner("florence2", model=str(florence2_dir), device="cpu", batch_size=3, max_length=40,
                               min_length=40, num_beams=1)
    stop = StopAfterReads(3)  # the loop's check, then two generated tokens
    result = caption_dataset(tmp_path, captioner, mode="overwrite", stop=stop)
    assert result.stopped and result.captioned == 0 and not list(tmp_path.glob("*.txt"))
    assert stop.left < 0 and stop.left > -10  # generation ended after a few tokens, not 40
    with pytest.raises(CaptionStopped):
        captioner.caption([noise(1)], StopAfterReads(0))
