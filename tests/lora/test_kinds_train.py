"""Each network type trained end to end from a config (the CLI on the builtin tiny SD1 at 64 px): the
written file passes A1111 1.10's builtin Lora code and LyCORIS's own loader, multiplier 0 is the
base exactly, a run continues from the file, a stopped LoHa run resumes to the same weights, and
bad network settings fail in one line before any model loads.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import yaml
from test_conformance_a1111 import a1111_lookup, layer_mapping, ldm_unet
from test_kinds_a1111 import a1111  # noqa: F401 - the fixture: A1111's own module types
from torch import nn

from lora_trainer.lora.file import load_lora_file, read_lora_metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TYPES = {  # network settings per type: convs on for the LyCORIS kinds, a LoKr factor that divides
    "lora": {},
    "locon": {"conv_dim": 2, "conv_alpha": 1},
    "loha": {"conv_dim": 2},
    "lokr": {"lokr_factor": 4, "conv_dim": 2},
    "dora": {"conv_dim": 2},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from lora_trainer import synthetic

    root = tmp_path_factory.mktemp("kinds_data")
    synthetic.write_dataset(str(root), synthetic.concept_set(synthetic.TARGET_CONCEPT, 4, seed=0), repeats=1,
                            name="zqx")
    return str(root)


@pytest.fixture(scope="module")
def adapter():
    from lora_trainer.models.tiny import build_tiny_adapter

    return build_tiny_adapter("sd1", pretrained=True)


def _config(path, data_dir: str, out_dir: str, **extra) -> str:
    cfg = {"base_model": "builtin:tiny-sd1", "train_data_dir": data_dir, "output_dir": out_dir, "resolution": 64,
           "enable_bucket": False, "lora_rank": 4, "lora_alpha": 2, "batch_size": 2, "max_train_steps": 2,
           "learning_rate": 1e-2, "save_precision": "fp32", "seed": 3, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """{type: written file}, each from `lora-trainer train --config` (UNet and text encoder)."""
    from lora_trainer.cli import main

    out = {}
    for ntype, extra in TYPES.items():
        d = tmp_path_factory.mktemp(f"run_{ntype}")
        cfg = _config(d / "c.yaml", data_dir, str(d / "out"), network_type=ntype, output_name=ntype, **extra)
        assert main(["train", "--config", cfg]) == 0, ntype
        out[ntype] = str(d / "out" / f"{ntype}.safetensors")
    return out


def _groups(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        name, _, part = key.partition(".")  # A1111's split of a key into module and part
        groups.setdefault(name, {})[part] = t
    return groups


def _file_network(sd, targets_fn, dtype=torch.float64):
    """Our network for the file (type, ranks read from its tensors), in `dtype`."""
    from lora_trainer.lora.infer import spec_from_weights
    from lora_trainer.lora.network import LoRANetwork

    spec = spec_from_weights(sd)
    targets = targets_fn(unet=True, text_encoder=any(k.startswith("lora_te") for k in sd),
                         conv=spec.effective_conv_rank > 0)
    net = LoRANetwork.from_spec(targets, spec, dtype)
    report = net.load_kohya_state_dict(sd)
    assert not report.missing and not report.unexpected, (report.missing[:3], report.unexpected[:3])
    return net, targets


@pytest.mark.parametrize("ntype", list(TYPES))
def test_trained_file_is_what_a1111_reads(a1111, trained, adapter, ntype):  # noqa: F811
    """Every key group finds its ldm module by name, is accepted by A1111's module types and gives our delta."""
    network, module_types = a1111
    sd, _ = load_lora_file(trained[ntype])
    meta = read_lora_metadata(trained[ntype])
    assert meta["ss_network_module"] == ("networks.lora" if ntype in ("lora", "locon") else "lycoris.kohya")
    assert any(k.startswith("lora_te_") for k in sd) and any(k.startswith("lora_unet_") for k in sd)
    net, targets = _file_network(sd, adapter.lora_targets)
    # a LoCon file with conv rank != rank reads back as LoRA with a conv rank: the same network
    assert net.spec.network_type == ntype or (ntype == "locon" and net.spec.effective_conv_rank == 2)
    te = nn.Module()
    from lora_test_models import tiny_te

    te.transformer = tiny_te(projection=True, num_hidden_layers=4)  # the builtin model's 4 layers
    mapping = layer_mapping(ldm_unet("sd1"), [("", te)])
    bases = {n: t.module for t in targets for n in (t.names or (t.name,))}
    ours = net.deltas(torch.float64)
    a_net = network.Network("test", None)
    changed = 0
    for name, w in _groups(sd).items():
        assert a1111_lookup(name, mapping, is_sd2=False) is not None, f"A1111 would not match {name}"
        weights = network.NetworkWeights(network_key=f"{name}.x", sd_key=name, w={k: v.double() for k, v in w.items()},
                                         sd_module=bases[name])
        made = next((m for t in module_types if (m := t.create_module(a_net, weights)) is not None), None)
        assert made is not None, f"no A1111 module type accepts {sorted(w)}"
        base_w = bases[name].weight.detach().double()
        updown, _ = made.calc_updown(base_w)
        torch.testing.assert_close(updown.reshape(base_w.shape), ours[name].reshape(base_w.shape),
                                   rtol=1e-7, atol=1e-10, msg=f"{name}: A1111's delta differs")
        changed += bool(ours[name].abs().max() > 0)
    assert changed > len(ours) // 2, "training left most modules at zero"


@pytest.mark.parametrize("ntype", ["lora", "locon", "loha", "lokr"])
def test_trained_file_is_what_lycoris_reads(trained, adapter, ntype):
    """LyCORIS's per-module loader steps (`get_module` + `make_module`) on the UNet keys give our output."""
    lyc_modules = pytest.importorskip("lycoris.modules")
    from lora_trainer.lora.discovery import unet_targets

    sd, _ = load_lora_file(trained[ntype])
    sd = {k: v.double() for k, v in sd.items() if k.startswith("lora_unet_")}
    unet = copy.deepcopy(adapter.unet).double()
    net, _ = _file_network(sd, lambda **kw: unet_targets(unet, "sd1", conv=kw["conv"]))
    by_name = {f"lora_unet_{n}".replace(".", "_"): m for n, m in unet.named_modules()}
    g = torch.Generator().manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for name, ours in net.loras.items():
            base = by_name[name]
            kind, params = lyc_modules.get_module(sd, name)
            assert kind is not None, f"LyCORIS does not recognise {name}"
            lyc = lyc_modules.make_module(kind, params, name, base)
            x = (torch.randn(1, base.in_channels, 8, 8, generator=g, dtype=torch.float64) if isinstance(base, nn.Conv2d)
                 else torch.randn(2, base.in_features, generator=g, dtype=torch.float64))
            with torch.no_grad():
                torch.testing.assert_close(ours.lora_out(x), lyc(x) - base(x), rtol=1e-9, atol=1e-11, msg=name)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("ntype", ["loha", "lokr", "dora"])
def test_evaluation_loads_any_type_and_multiplier_zero_is_the_base(trained, adapter, ntype):
    from lora_trainer.train.evaluate import load_network

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        cond = adapter.encode_text(["a zqx"])
        ref = adapter.predict(x, t, cond)
    net = load_network(adapter, trained[ntype])
    assert net.spec.network_type == ntype
    net.attach()
    try:
        with torch.no_grad():
            net.multiplier = 0.0
            assert torch.equal(adapter.predict(x, t, adapter.encode_text(["a zqx"])), ref)
            net.multiplier = 1.0
            assert not torch.equal(adapter.predict(x, t, adapter.encode_text(["a zqx"])), ref)
    finally:
        net.detach()


@pytest.mark.parametrize("ntype", ["loha", "lokr", "dora"])
def test_a_run_continues_from_a_file_of_its_type(trained, data_dir, tmp_path, ntype):
    """network_weights: the type and ranks come from the file (the config says plain lora); every tensor
    loads, and at a negligible learning rate the new file is the old one."""
    from lora_trainer.config import load_config
    from lora_trainer.tasks import plan, train

    logs: list[str] = []
    cfg = load_config(_config(tmp_path / "c.yaml", data_dir, str(tmp_path / "out"), network_weights=trained[ntype],
                              learning_rate=1e-9, max_train_steps=1, lokr_factor=4))
    dry, _ = plan(cfg)  # the dry run plans the file's type too, not the config's plain lora
    assert dry.network[0].startswith(f"network: {ntype}, rank 4"), dry.network
    result = train(cfg, emit=lambda e: logs.append(str(e.data.get("message"))) if e.type == "log" else None)
    assert any(m.startswith(f"network: {ntype}") for m in logs), logs
    assert any("continuing from" in m and "0 missing" in m and "0 ignored" in m for m in logs), logs
    before, _ = load_lora_file(trained[ntype])
    after, _ = load_lora_file(result.output_path)
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6, msg=k)
    assert read_lora_metadata(result.output_path)["ss_network_module"] == "lycoris.kohya"


def test_a_stopped_loha_run_resumes_to_the_same_weights(data_dir, tmp_path, adapter):
    from lora_trainer.config import load_config
    from lora_trainer.events import StopFlag
    from lora_trainer.tasks import train

    common = {"network_type": "loha", "conv_dim": 2, "max_train_steps": 4, "batch_size": 1, "save_state": True,
              "lora_dropout": 0.1, "block_lr_weight": [0.5] * 12 + [1.0] * 13}

    def cfg(name: str, **more):
        return load_config(_config(tmp_path / f"{name}.yaml", data_dir, str(tmp_path / name), **common, **more))

    full = train(cfg("a"), adapter=adapter)
    stop = StopFlag()

    def sink(event):
        if event.type == "progress" and event.data["step"] == 2:
            stop.request("test stop")

    part = train(cfg("b"), adapter=adapter, emit=sink, stop=stop)
    assert part.stopped and part.steps == 2
    done = train(cfg("b", resume_from_checkpoint="latest"), adapter=adapter)
    assert done.steps == full.steps == 4
    a, _ = load_lora_file(full.output_path)
    b, _ = load_lora_file(done.output_path)
    assert a.keys() == b.keys() and any(".hada_w1_a" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def test_bad_network_settings_fail_in_one_line_before_the_model(data_dir, tmp_path):
    """In a fresh process: each bad setting is exit 2 with one `error:` line naming the field, the model
    never imported; the dry run shows the type, the block lists and a LoHa-sized estimate."""
    cases = {
        "network_type": {"network_type": "lorha"},
        "lokr_factor": {"network_type": "lokr", "lokr_factor": 3, "model_type": "sd1"},
        "block_dims": {"block_dims": [4] * 5},
        "block_lr_weight": {"block_lr_weight": [1.0] * 23, "model_type": "sd1"},
        "network_args.use_tucker": {"network_args": ["algo=loha", "use_tucker=true"]},
        "network_weights": {"network_weights": str(tmp_path / "notes.safetensors")},  # text, not a LoRA
    }
    (tmp_path / "notes.safetensors").write_text("not a LoRA\n")
    paths = [_config(tmp_path / f"{i}.yaml", data_dir, str(tmp_path / "out"), **extra)
             for i, extra in enumerate(cases.values())]
    dry = _config(tmp_path / "dry.yaml", data_dir, str(tmp_path / "out"), model_type="sd1", network_type="loha",
                  block_dims=[2] * 12 + [4] * 13)
    code = ("import sys; from lora_trainer.cli import main\n"
            "for p in sys.argv[2:]: print('RC', main(['train', '--config', p]), file=sys.stderr)\n"
            "print('RC', main(['train', '--config', sys.argv[1], '--dry-run']), file=sys.stderr)\n"
            "print('MODEL_LOADED' if 'diffusers' in sys.modules else 'NO_MODEL', file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code, dry, *paths], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    err = res.stderr.splitlines()
    assert "NO_MODEL" in err, res.stderr[-2000:]
    rcs = [ln for ln in err if ln.startswith("RC ")]
    assert rcs == ["RC 2"] * len(cases) + ["RC 0"], res.stderr[-2000:]
    errors = [ln for ln in err if ln.startswith("error:")]
    assert len(errors) == len(cases), errors
    for field, line in zip(cases, errors, strict=True):
        assert field in line, (field, line)
    assert "network: loha, rank 4" in res.stdout and "block_dims: IN00-IN11 2, MID-OUT11 4" in res.stdout, res.stdout
    assert "trainable parameters" in res.stdout


def test_the_form_sends_the_network_keys(tmp_path):
    """The app's form shows the new keys from the schema and its values load back as the same config."""
    gr = pytest.importorskip("gradio")
    from lora_trainer.config import load_config
    from lora_trainer.ui import form as F
    from lora_trainer.ui.compat import make

    names = ["network_type", "lokr_factor", "dora_wd", "network_include", "network_blocks", "block_dims"]
    basic, advanced = F.all_field_names()
    assert set(names) <= set(basic + advanced)
    with gr.Blocks():
        fields = F.build_fields(gr, make, names)
    want = {"network_type": "lokr", "lokr_factor": 8, "dora_wd": True, "network_include": ["lora_unet_*", "*_attn1_*"],
            "network_blocks": [{"pattern": "lora_unet_up_*", "rank": 8, "lr_weight": 0.5}],
            "block_dims": [4] * 25}
    shown = [F.display(f, want[f.info.name]) for f in fields]
    sent = F.values_to_dict(fields, shown)
    cfg = load_config(sent, check_paths=False)
    assert {n: getattr(cfg, n) for n in names} == want


def test_sdxl_lokr_with_block_ranks_trains_and_a1111_reads_it(a1111, data_dir, tmp_path):  # noqa: F811
    """The builtin tiny SDXL (two text encoders, 23 kohya blocks): LoKr with kohya block_dims; each key
    group is taken by A1111's LoKr type with our delta, and each block got its own rank."""
    from lora_trainer.cli import main
    from lora_trainer.lora.blocks import block_label
    from lora_trainer.models.tiny import build_tiny_adapter

    dims = [2] * 10 + [6] * 13  # EMB, IN00-IN08 | MID0-2, OUT00-OUT08, OUT
    cfg = _config(tmp_path / "c.yaml", data_dir, str(tmp_path / "out"), base_model="builtin:tiny-sdxl",
                  network_type="lokr", lokr_factor=4, block_dims=dims, output_name="xl")
    assert main(["train", "--config", cfg]) == 0
    path = str(tmp_path / "out" / "xl.safetensors")
    sd, _ = load_lora_file(path)
    assert {k.split("_")[1] for k in sd} == {"unet", "te1", "te2"}
    ranks = {block_label(k.split(".")[0]): int(t.shape[0]) for k, t in sd.items() if k.endswith(".lokr_w2_b")}
    assert ranks and all(r == (2 if label.startswith("IN") else 6) for label, r in ranks.items() if label != "TE")
    network, module_types = a1111
    adapter = build_tiny_adapter("sdxl", pretrained=False)
    net, targets = _file_network(sd, adapter.lora_targets)
    bases = {n: t.module for t in targets for n in (t.names or (t.name,))}
    ours = net.deltas(torch.float64)
    a_net = network.Network("test", None)
    for name, w in _groups(sd).items():
        weights = network.NetworkWeights(network_key=f"{name}.x", sd_key=name, w={k: v.double() for k, v in w.items()},
                                         sd_module=bases[name])
        made = module_types[2].create_module(a_net, weights)  # ModuleTypeLokr
        assert made is not None, f"A1111's LoKr type refuses {sorted(w)}"
        base_w = bases[name].weight.detach().double()
        updown, _ = made.calc_updown(base_w)
        torch.testing.assert_close(updown.reshape(base_w.shape), ours[name].reshape(base_w.shape),
                                   rtol=1e-7, atol=1e-10, msg=f"{name}: A1111's delta differs")


def test_resuming_with_another_network_type_names_the_state(data_dir, tmp_path, adapter):
    from lora_trainer.config import load_config
    from lora_trainer.errors import ConfigError
    from lora_trainer.tasks import train

    first = load_config(_config(tmp_path / "a.yaml", data_dir, str(tmp_path / "out"), network_type="loha"))
    train(first, adapter=adapter)
    again = load_config(_config(tmp_path / "b.yaml", data_dir, str(tmp_path / "out"), network_type="lokr",
                                resume_from_checkpoint="latest", max_train_steps=3))
    with pytest.raises(ConfigError) as exc:
        train(again, adapter=adapter)
    assert exc.value.field == "resume_from_checkpoint" and "loha" in str(exc.value), str(exc.value)
