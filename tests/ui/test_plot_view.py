"""The run view's texts and the loss picture (no browser): plan table, end line, next sample, whole-run curve."""

from __future__ import annotations

from lora_trainer.events import Event
from lora_trainer.ui.plot import loss_plot
from lora_trainer.ui.run_view import Cadence, RunView


def test_plan_is_a_table_and_names_the_loaded_checkpoint():
    view = RunView(loaded_model="v1-5-pruned.safetensors")
    view.feed([Event("plan", {"images": 4, "samples_per_epoch": 8, "buckets": {"64x64": 8}, "batch_size": 2,
                              "gradient_accumulation_steps": 1, "steps_per_epoch": 4, "epochs": 2, "total_steps": 8,
                              "arch": None, "arch_source": "no base_model"})])
    table = view.plan_markdown()
    assert table.startswith("| Plan") and "| Steps | 8 (4 per epoch × 2 epochs) |" in table
    assert "v1-5-pruned.safetensors (loaded in the WebUI)" in table and "no base_model" not in table


def test_status_says_when_the_next_sample_comes_and_the_end_line_has_loss_time_file(tmp_path):
    view = RunView(cadence=Cadence(steps=0, epochs=2))
    view.feed([Event("progress", {"step": 3, "total_steps": 8, "epoch": 1, "total_epochs": 4, "loss": 0.5}, time=10.0)])
    assert "Next sample at the end of epoch 2." in view.status_markdown()
    lora = tmp_path / "x.safetensors"
    lora.write_bytes(b"0" * 2_000_000)
    view.feed([Event("published", {"path": str(lora)}, time=70.0),
               Event("done", {"output": str(lora), "final_loss": 0.25}, time=75.0)])
    line = view.status_markdown()
    assert line == "**Done.** 3 steps · final loss 0.2500 · time 1:05 · `x.safetensors` (2.0 MB)", line
    assert Cadence(steps=50).next_sample(120, 1) == "step 150"


def test_loss_plot_shows_the_whole_run_and_marks_the_resume():
    view = RunView()
    view.earlier = ([1, 2, 3], [0.9, 0.8, 0.7])
    view.feed([Event("progress", {"step": s, "loss": 0.6 - s / 100}) for s in (4, 5, 6)])
    steps, losses, resumed = view.curve()
    assert steps == [1, 2, 3, 4, 5, 6] and resumed == 4
    img = loss_plot(steps, losses, resumed)
    top = img.crop((0, 0, img.width, 30)).convert("L")
    assert top.getextrema()[0] < 200, "legend drawn in the top band"
    right = img.crop((img.width - 60, 30, img.width, 60)).convert("L")
    assert right.getextrema()[0] < 200, "the top value is drawn right of the plot, not under the label badge"


def test_validation_loss_is_its_own_series_with_a_legend():
    view = RunView()
    view.feed([Event("progress", {"step": s, "loss": 0.5 - s / 100, **({"val_loss": 0.7} if s % 2 == 0 else {})})
               for s in range(1, 7)])
    assert view.val == [(2, 0.7), (4, 0.7), (6, 0.7)]
    steps, losses, _ = view.curve()
    with_val, without = loss_plot(steps, losses, None, view.val), loss_plot(steps, losses)
    orange = [(x, y) for x in range(with_val.width) for y in range(with_val.height)
              if with_val.getpixel((x, y)) == (230, 120, 20)]
    assert orange and not any(without.getpixel(p) == (230, 120, 20) for p in orange)
    assert any(y < 30 for _, y in orange), "the legend names the validation series"
    assert min(y for _, y in orange if y >= 30) < 40, "0.7 is above every training loss: the top of the axis"
