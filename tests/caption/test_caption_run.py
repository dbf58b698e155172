"""Captioning a dataset folder: modes, trigger placement, idempotence, .txt and metadata.csv output,
through the engine and through the command line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from lora_trainer.caption import make_captioner
from lora_trainer.caption.run import caption_dataset, compose
from lora_trainer.cli import main
from lora_trainer.events import StopFlag

from .conftest import noise, solid


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "10_cat").mkdir(parents=True)
    (root / "2_dog").mkdir()
    solid((255, 0, 0)).save(root / "10_cat" / "red.png")
    solid((0, 0, 255)).save(root / "10_cat" / "blue.jpg")
    noise(5).save(root / "2_dog" / "n1.webp")
    (root / "2_dog" / "n1.txt").write_text("hand written, dog")
    return root


def test_compose_modes_and_trigger():
    assert compose(None, "a, b", "overwrite", "ohwx") == "ohwx, a, b"
    assert compose("x, a", "a, b", "append", "") == "x, a, b"
    assert compose("x, ohwx", "b", "append", "ohwx") == "ohwx, x, b"  # moved first, not doubled
    assert compose("x", "b, OHWX", "overwrite", "ohwx, style") == "ohwx, style, b"


def test_modes_with_wd14_txt(dataset, wd14_dir):
    tagger = make_captioner("wd14", model=str(wd14_dir), batch_size=2)
    events = []
    result = caption_dataset(dataset, tagger, mode="skip-existing", trigger="ohwx", emit=events.append)
    assert (result.total, result.captioned, result.skipped, result.written) == (3, 2, 1, 2)
    assert (dataset / "10_cat/red.txt").read_text() == "ohwx, red theme, 1girl, long hair, ^_^"
    assert (dataset / "10_cat/blue.txt").read_text().startswith("ohwx, blue theme, hatsune miku")
    assert (dataset / "2_dog/n1.txt").read_text() == "hand written, dog"
    assert not (dataset / "metadata.csv").exists()
    progress = [e.data for e in events if e.type == "progress"]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 2 and events[-1].type == "done"

    before = snapshot(dataset)
    again = caption_dataset(dataset, tagger, mode="skip-existing", trigger="ohwx")
    assert (again.captioned, again.written) == (0, 0) and snapshot(dataset) == before  # idempotent

    caption_dataset(dataset, tagger, mode="append", trigger="ohwx")
    appended = (dataset / "2_dog/n1.txt").read_text()
    assert appended.startswith("ohwx, hand written, dog, ") and appended.count("ohwx") == 1
    assert (dataset / "10_cat/red.txt").read_text() == "ohwx, red theme, 1girl, long hair, ^_^"  # no doubles
    before = snapshot(dataset)
    assert caption_dataset(dataset, tagger, mode="append", trigger="ohwx").written == 0
    assert snapshot(dataset) == before

    caption_dataset(dataset, tagger, mode="overwrite")
    assert "hand written" not in (dataset / "2_dog/n1.txt").read_text()
    assert (dataset / "10_cat/red.txt").read_text() == "red theme, 1girl, long hair, ^_^"


def test_csv_output_is_quoted_and_keeps_other_rows(dataset, wd14_dir):
    (dataset / "metadata.csv").write_text('filename,prompt\nold/gone.png,"kept, row"\n')
    tagger = make_captioner("wd14", model=str(wd14_dir))
    caption_dataset(dataset, tagger, mode="overwrite", fmt="csv", trigger="ohwx")
    text = (dataset / "metadata.csv").read_text()
    assert text.startswith("filename,prompt\n")
    assert '10_cat/red.png,"ohwx, red theme, 1girl, long hair, ^_^"' in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["filename"]: r["prompt"] for r in rows}["old/gone.png"] == "kept, row"
    assert [r["filename"] for r in rows][1:] == ["10_cat/blue.jpg", "10_cat/red.png", "2_dog/n1.webp"]
    assert not (dataset / "10_cat" / "red.txt").exists()
    assert (dataset / "2_dog/n1.txt").read_text() == "hand written, dog"  # .txt untouched in csv format


def test_both_formats_and_blip_through_the_cli(dataset, blip_dir, capsys):
    args = ["caption", str(dataset), "--captioner", "blip", "--model", str(blip_dir), "--format", "both",
            "--trigger", "ohwx", "--max-length", "6", "--min-length", "3", "--num-beams", "1",
            "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    red = (dataset / "10_cat/red.txt").read_text()
    assert red.startswith("ohwx, ") and len(red) > len("ohwx, ")
    text = (dataset / "metadata.csv").read_text(encoding="utf-8")
    rows = {r["filename"]: r["prompt"] for r in csv.DictReader(io.StringIO(text))}
    assert rows["10_cat/red.png"] == red and rows["2_dog/n1.webp"] == "hand written, dog"
    assert "2 captioned" in capsys.readouterr().out
    before = snapshot(dataset)
    assert main(args) == 0 and snapshot(dataset) == before


def test_auto_label_writes_the_given_csv(tmp_path, wd14_dir):
    images = tmp_path / "imgs"
    images.mkdir()
    solid((255, 0, 0)).save(images / "a.png")
    out = tmp_path / "imgs" / "metadata.csv"
    assert main(["auto_label", "--input", str(images), "--output", str(out), "--captioner", "wd14",
                 "--model", str(wd14_dir)]) == 0
    assert out.read_text() == 'filename,prompt\na.png,"red theme, 1girl, long hair, ^_^"\n'
    assert not (images / "a.txt").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    solid((1, 2, 3)).save(tmp_path / "d" / "x.png")
    assert main(["caption", str(tmp_path / "d"), "--captioner", "wd14", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: WD14 tagger model") and "\n" not in err
    assert main(["caption", str(tmp_path / "missing"), "--captioner", "wd14"]) == 2


def test_unreadable_images_are_reported_and_skipped(tmp_path, wd14_dir):
    (tmp_path / "ok.png").write_bytes(b"")
    solid((255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    events = []
    result = caption_dataset(tmp_path, make_captioner("wd14", model=str(wd14_dir)), emit=events.append)
    assert result.failed == ["bad.png"] and result.captioned == 1 and (tmp_path / "ok.txt").exists()
    assert any(e.type == "log" and "bad.png" in e.data["message"] for e in events)


def test_stop_request_ends_between_batches(tmp_path, wd14_dir):
    for i in range(3):
        solid((i * 80, 0, 0)).save(tmp_path / f"{i}.png")
    stop = StopFlag()

    def sink(event):
        if event.type == "progress":
            stop.request()

    result = caption_dataset(tmp_path, make_captioner("wd14", model=str(wd14_dir), batch_size=1), emit=sink, stop=stop)
    assert result.stopped and result.captioned == 1 and len(list(tmp_path.glob("*.txt"))) == 1


def test_training_scan_reads_what_captioning_wrote(dataset, wd14_dir):
    from lora_trainer.config import load_config
    from lora_trainer.data import scan_dataset

    caption_dataset(dataset, make_captioner("wd14", model=str(wd14_dir)), mode="overwrite", fmt="csv",
                    trigger="ohwx")
    index = scan_dataset(load_config({"train_data_dir": str(dataset), "base_model": "builtin:tiny-sd1"}))
    captions = {Path(i.path).name: (i.caption, i.caption_source) for i in index.items}
    assert captions["red.png"] == ("ohwx, red theme, 1girl, long hair, ^_^", "csv")
    assert captions["n1.webp"][1] == "csv" and captions["n1.webp"][0].startswith("ohwx, ")


def test_report_option_checks_images_and_counts_tags(tmp_path, capsys):
    noise(1, (300, 300)).save(tmp_path / "big.png")
    noise(2, (300, 300)).save(tmp_path / "big_copy.jpg")  # different picture
    solid((0, 0, 0), (32, 32)).save(tmp_path / "tiny.png")
    (tmp_path / "big.txt").write_text("ohwx, cat")
    (tmp_path / "tiny.txt").write_text("ohwx")
    assert main(["caption", str(tmp_path), "--report"]) == 1
    out = capsys.readouterr().out
    assert "3 images checked: 1 too small" in out and "tiny.png" in out
    assert "2  ohwx" in out and "1  cat" in out
