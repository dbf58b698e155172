"""Masks (`<stem>-masklabel.png` or alpha), regularisation images (kohya's repeats balancing) and the
validation split: found, checked and loaded before any model, with bad input named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_trainer.config import load_config
from lora_trainer.data import TrainDataset, scan_dataset
from lora_trainer.data.extra_sets import add_regularisation, reg_repeats, split_validation
from lora_trainer.data.scan import ImageItem
from lora_trainer.errors import ConfigError, DatasetError
from tests.data.conftest import make_image


def _cfg(root: Path, **over):
    raw = {"train_data_dir": str(root), "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64,
           "max_bucket_reso": 64, "batch_size": 1, "seed": 3}
    return load_config({**raw, **over}, check_paths=False)


def _half_mask(path: Path, size=(64, 64)) -> None:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))  # left half: learn
    mask.save(path)


def test_a_mask_beside_the_image_is_found_not_trained_and_loaded_on_the_latent_grid(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    _half_mask(tmp_path / "a-masklabel.png")
    index = scan_dataset(_cfg(tmp_path))
    assert [Path(it.path).name for it in index.items] == ["a.png", "b.png"]
    assert Path(index.items[0].mask_path).name == "a-masklabel.png" and index.items[1].mask_path is None
    ds = TrainDataset(_cfg(tmp_path), index)
    masks = ds.load_batch([0], 0, with_pixels=False)["masks"]
    assert masks.shape == (1, 1, 8, 8)
    assert torch.equal(masks[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(masks[0, 0, :, 4:], torch.zeros(8, 4))
    assert ds.load_batch([1], 0, with_pixels=False)["masks"] is None  # no mask: trains as before
    off = scan_dataset(_cfg(tmp_path, masked_loss=False))
    assert all(it.mask_path is None for it in off.items) and len(off.items) == 2


def test_a_flipped_sample_flips_its_mask(tmp_path):
    make_image(tmp_path / "a.png")
    _half_mask(tmp_path / "a-masklabel.png")
    cfg = _cfg(tmp_path, flip_aug=True)
    ds = TrainDataset(cfg, scan_dataset(cfg))
    seen = set()
    for epoch in range(12):
        batch = ds.load_batch([0], epoch, with_pixels=False)
        left = float(batch["masks"][0, 0, :, :4].mean())
        assert left == (0.0 if batch["flips"][0] else 1.0)
        seen.add(batch["flips"][0])
    assert seen == {True, False}


def test_alpha_channel_as_mask(tmp_path):
    image = Image.new("RGBA", (64, 64), (200, 80, 40, 0))
    image.paste((200, 80, 40, 255), (0, 0, 64, 32))  # top half opaque
    image.save(tmp_path / "a.png")
    cfg = _cfg(tmp_path, alpha_mask=True)
    masks = TrainDataset(cfg, scan_dataset(cfg)).load_batch([0], 0, with_pixels=False)["masks"]
    assert torch.equal(masks[0, 0, :4], torch.ones(4, 8)) and torch.equal(masks[0, 0, 4:], torch.zeros(4, 8))


def test_a_mask_of_another_size_is_named_in_one_line(tmp_path):
    make_image(tmp_path / "a.png")
    _half_mask(tmp_path / "a-masklabel.png", size=(32, 64))
    with pytest.raises(DatasetError) as exc:
        scan_dataset(_cfg(tmp_path))
    message = str(exc.value)
    assert "a-masklabel.png" in message and "32x64" in message and "64x64" in message and "\n" not in message


def _items(repeats: list[int]) -> list[ImageItem]:
    return [ImageItem(f"/r/{i}.png", "person", r, "1_person", 64, 64) for i, r in enumerate(repeats)]


@pytest.mark.parametrize(("given", "train", "expected"), [
    ([1, 1, 1], 10, [4, 3, 3]),  # cycled one repeat at a time until the counts match
    ([5, 5], 3, [5, 0]),  # the first pass already covers the training samples
    ([2, 1], 3, [2, 1]),
])
def test_reg_repeats_match_the_training_samples_as_kohya_does(given, train, expected):
    items = _items(given)
    reg_repeats(items, train)
    assert [it.repeats for it in items] == expected


def test_reg_images_join_the_epoch_with_their_loss_weight(tmp_path):
    for i in range(3):
        make_image(tmp_path / "train" / "2_zqx" / f"t{i}.png")
    for i in range(2):
        make_image(tmp_path / "reg" / "1_person" / f"r{i}.png", color=(10, 200, 10))
    make_image(tmp_path / "reg" / "1_person" / "r0-masklabel.png")  # a mask file is never a reg image
    cfg = _cfg(tmp_path / "train", reg_data_dir=str(tmp_path / "reg"), prior_loss_weight=0.5, trigger_word="zqx")
    index = scan_dataset(cfg)
    add_regularisation(cfg, index)
    reg = [it for it in index.items if it.is_reg]
    assert [Path(it.path).name for it in reg] == ["r0.png", "r1.png"]
    assert sum(it.repeats for it in reg) == 6  # as many as the 3 x 2 training samples
    assert all(it.caption == "person" for it in reg)  # class tokens, no trigger word
    ds = TrainDataset(cfg, index)
    weights = {ds.items[ds.item_of(sid)].is_reg: ds.load_batch([sid], 0, with_pixels=False)["loss_weights"][0]
               for sid in ds.sample_ids()}
    assert weights == {False: 1.0, True: 0.5}
    assert len(ds.sample_ids()) == 12


def test_an_empty_reg_folder_names_reg_data_dir(tmp_path):
    make_image(tmp_path / "train" / "a.png")
    (tmp_path / "reg").mkdir()
    cfg = _cfg(tmp_path / "train", reg_data_dir=str(tmp_path / "reg"))
    with pytest.raises(ConfigError) as exc:
        add_regularisation(cfg, scan_dataset(cfg))
    assert exc.value.field == "reg_data_dir" and "no usable training images" in str(exc.value)


def test_validation_split_is_chosen_by_seed_and_leaves_training_images(tmp_path):
    for i in range(10):
        make_image(tmp_path / f"{i}.png")

    def held(seed: int) -> list[str]:
        cfg = _cfg(tmp_path, validation_split=0.2, seed=seed)
        index = scan_dataset(cfg)
        split_validation(cfg, index)
        assert len(index.items) == 8 and not {it.path for it in index.items} & {it.path for it in index.validation}
        return [Path(it.path).name for it in index.validation]

    assert held(1) == held(1)
    assert len({tuple(held(s)) for s in range(6)}) > 1
    cfg = _cfg(tmp_path, validation_split=0.5)
    index = scan_dataset(cfg)
    index.items = index.items[:1]
    with pytest.raises(ConfigError) as exc:
        split_validation(cfg, index)
    assert exc.value.field == "validation_split"
