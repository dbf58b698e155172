from __future__ import annotations

from pathlib import Path

import pytest

from lora_trainer.config import load_config
from lora_trainer.data import scan_dataset
from lora_trainer.errors import ConfigError, DatasetError
from tests.data.conftest import make_image


def _cfg(root: Path, **extra):
    return load_config({"train_data_dir": str(root), **extra}, check_paths=False)


def test_kohya_folders_repeats_and_class_tokens(tmp_path: Path) -> None:
    make_image(tmp_path / "10_sks dog" / "a.png")
    make_image(tmp_path / "10_sks dog" / "b.jpg")
    (tmp_path / "10_sks dog" / "b.txt").write_text("sks dog, running\n", encoding="utf-8")
    make_image(tmp_path / "3_cat" / "c.webp")
    (tmp_path / "3_cat" / "c.caption").write_text("\ufeffa cat\non grass\n", encoding="utf-8")
    make_image(tmp_path / "plain" / "d.bmp")
    make_image(tmp_path / "root.png")
    (tmp_path / ".lora_trainer_cache").mkdir()
    make_image(tmp_path / ".lora_trainer_cache" / "hidden.png")
    index = scan_dataset(_cfg(tmp_path, num_repeats=2))
    by_name = {Path(i.path).name: i for i in index.items}
    assert set(by_name) == {"a.png", "b.jpg", "c.webp", "d.bmp", "root.png"}
    assert (by_name["a.png"].caption, by_name["a.png"].repeats, by_name["a.png"].caption_source) == \
        ("sks dog", 10, "class")
    assert by_name["b.jpg"].caption == "sks dog, running" and by_name["b.jpg"].caption_source == "file"
    assert by_name["c.webp"].caption == "a cat, on grass" and by_name["c.webp"].repeats == 3
    assert by_name["d.bmp"].repeats == 2 and by_name["d.bmp"].caption == ""
    assert by_name["root.png"].repeats == 2 and by_name["root.png"].subset == tmp_path.name
    assert index.num_images == 5
    assert index.num_repeats_total == 10 + 10 + 3 + 2 + 2
    assert index.dataset_dirs["10_sks dog"] == {"n_repeats": 10, "img_count": 2}
    assert index.tag_frequency["10_sks dog"] == {"sks dog": 2, "running": 1}
    assert any("no caption" in n for n in index.notes)


def test_trigger_word_prepended_only_when_missing(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("photo of Zxc person", encoding="utf-8")
    make_image(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("photo, zxcv", encoding="utf-8")
    make_image(tmp_path / "c.png")
    index = scan_dataset(_cfg(tmp_path, trigger_word="zxc"))
    captions = {Path(i.path).name: i.caption for i in index.items}
    assert captions == {"a.png": "photo of Zxc person", "b.png": "zxc, photo, zxcv", "c.png": "zxc"}


def test_metadata_csv(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png", "d.png"):
        make_image(tmp_path / name)
    (tmp_path / "c.txt").write_text("from caption file", encoding="utf-8")
    (tmp_path / "d.txt").write_text("file loses to csv", encoding="utf-8")
    csv = tmp_path / "metadata.csv"
    csv.write_text('\ufeffa.png,"quoted, with comma"\n\nb.png,1girl, solo, smile\nd.png,csv wins\n',
                   encoding="utf-8")
    index = scan_dataset(_cfg(tmp_path))  # found without metadata_path: metadata.csv in the folder
    captions = {Path(i.path).name: (i.caption, i.caption_source) for i in index.items}
    assert captions["a.png"] == ("quoted, with comma", "csv")
    assert captions["b.png"] == ("1girl, solo, smile", "csv")
    assert captions["c.png"] == ("from caption file", "file")
    assert captions["d.png"] == ("csv wins", "csv")


@pytest.mark.parametrize(("text", "line", "words"), [
    ("filename,prompt\na.png,ok\nlonely\n", 3, "expected 'filename,prompt'"),
    ("a.png,ok\n,no name\n", 2, "empty filename"),
    ("a.png,ok\nmissing.png,gone\n", 2, "image not found"),
    ('a.png,"unterminated\n', 1, "unexpected end of data"),
    ('a.png,"x"y\n', 1, "expected after"),
])
def test_bad_csv_lines_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    make_image(tmp_path / "a.png")
    csv = tmp_path / "meta.csv"
    csv.write_text(text, encoding="utf-8")
    cfg = _cfg(tmp_path, metadata_path=str(csv))
    with pytest.raises(DatasetError) as exc:
        scan_dataset(cfg)
    assert f"meta.csv line {line}" in str(exc.value) and words in str(exc.value)


def test_csv_not_utf8(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_bytes("a.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError) as exc:
        scan_dataset(_cfg(tmp_path))
    assert "metadata.csv" in str(exc.value) and "UTF-8" in str(exc.value)


def test_corrupt_and_unsupported_skipped_with_one_warning(tmp_path: Path) -> None:
    make_image(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    make_image(tmp_path / "anim.gif").rename(tmp_path / "anim.gif")
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")  # not image-like: silently ignored
    events = []
    index = scan_dataset(_cfg(tmp_path), emit=events.append)
    assert [Path(i.path).name for i in index.items] == ["good.png"]
    skipped = {Path(p).name: reason for p, reason in index.skipped}
    assert set(skipped) == {"garbage.png", "truncated.png", "anim.gif"}
    assert "unsupported format .gif" in skipped["anim.gif"]
    warnings = [e for e in events if e.type == "log" and e.data["level"] == "warning"]
    assert len(warnings) == 1
    for name in skipped:
        assert name in warnings[0].data["message"]


def test_empty_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        scan_dataset(_cfg(tmp_path))
    assert str(tmp_path) in str(exc.value)
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(DatasetError) as exc:
        scan_dataset(_cfg(tmp_path))
    assert "x.png" in str(exc.value)
    with pytest.raises(ConfigError) as cexc:
        scan_dataset(_cfg(tmp_path / "missing"))
    assert cexc.value.field == "train_data_dir"


def test_exif_rotation_swaps_size(tmp_path: Path) -> None:
    from PIL import Image

    image = Image.new("RGB", (80, 40), (10, 20, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    image.save(tmp_path / "rot.jpg", exif=exif)
    index = scan_dataset(_cfg(tmp_path))
    assert (index.items[0].width, index.items[0].height) == (40, 80)


def test_summary_is_json(tmp_path: Path) -> None:
    import json

    make_image(tmp_path / "5_a_b" / "x.png")
    index = scan_dataset(_cfg(tmp_path))
    assert index.items[0].caption == "a_b"  # class tokens verbatim, as kohya
    data = json.loads(json.dumps(index.summary()))
    assert data["num_images"] == 1 and data["num_repeats_total"] == 5


def test_transparency_becomes_white_and_nested_folders_noted(tmp_path: Path) -> None:
    from PIL import Image

    from lora_trainer.data.images import load_rgb

    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_rgb(str(tmp_path / "clear.png")).getpixel((0, 0)) == (255, 255, 255)
    make_image(tmp_path / "2_x" / "deeper" / "lost.png")
    make_image(tmp_path / "2_x" / "kept.png")
    index = scan_dataset(_cfg(tmp_path))
    assert {Path(i.path).name for i in index.items} == {"clear.png", "kept.png"}
    assert any("deeper" in n for n in index.notes)
