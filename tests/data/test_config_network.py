"""The network keys of a config: network types, LoKr/DoRA options, block-wise lists and rules, and the
kohya / LyCORIS spellings (`network_module: lycoris.kohya`, `network_args`) they come in."""

from __future__ import annotations

import pytest
import yaml

from lora_trainer.config import load_config
from lora_trainer.errors import ConfigError


def _load(raw: dict, *overrides: str):
    return load_config(raw, list(overrides), check_paths=False)


def test_lycoris_network_args_map_onto_fields():
    cfg = _load({"network_module": "lycoris.kohya", "network_dim": 8,
                 "network_args": ["algo=lokr", "factor=8", "full_matrix=True", "conv_dim=4", "use_tucker=False",
                                  "block_dims=" + ",".join(["4"] * 12 + ["8"] * 13)]})
    assert (cfg.network_type, cfg.lokr_factor, cfg.lokr_full_rank, cfg.conv_dim) == ("lokr", 8, True, 4)
    assert cfg.block_dims == [4] * 12 + [8] * 13
    # no algo: LyCORIS's default LoCon; an explicit network_type wins in either order; convs at
    # network_dim / network_alpha unless conv_dim is given (LyCORIS's defaults)
    plain = _load({"network_module": "lycoris.kohya", "network_dim": 16, "network_alpha": 4})
    assert (plain.network_type, plain.conv_dim, plain.conv_alpha) == ("locon", 16, 4.0)
    assert any("conv_dim 16" in n for n in plain.notes)
    assert _load({"network_module": "networks.lora", "network_dim": 16}).conv_dim == 0
    assert _load({"network_type": "loha", "network_module": "lycoris.kohya"}).network_type == "loha"
    assert _load({"network_module": "lycoris.kohya", "algo": "LoHa"}).network_type == "loha"
    assert _load({"network_module": "networks.lora"}).network_type == "lora"


def test_dora_and_kohya_lr_weights():
    cfg = _load({"network_args": ["algo=locon", "dora_wd=True", "wd_on_output=True", "mid_lr_weight=0",
                                  "down_lr_weight=" + ",".join(["0.5"] * 12)]})
    assert (cfg.network_type, cfg.dora_wd) == ("dora", False)
    assert cfg.block_lr_weight == [0.5] * 12 + [0.0] + [1.0] * 12
    assert any("wd_on_output" in n for n in cfg.notes)
    loha = _load({"network_args": {"algo": "loha", "dora_wd": True}})
    assert (loha.network_type, loha.dora_wd) == ("loha", True)


def test_lists_and_rules_from_yaml_text_and_overrides():
    cfg = _load({"network": {"network_include": "lora_unet_*\n*_attn2_*", "network_exclude": "a, b",
                             "network_blocks": [{"pattern": "lora_unet_up_*", "rank": "16", "lr_weight": 0.5},
                                                "*_ff_net_*"]}},
                "block_lr_weight=" + ",".join(["1"] * 23))
    assert cfg.network_include == ["lora_unet_*", "*_attn2_*"] and cfg.network_exclude == ["a", "b"]
    assert cfg.network_blocks == [{"pattern": "lora_unet_up_*", "rank": 16, "lr_weight": 0.5},
                                  {"pattern": "*_ff_net_*", "exclude": True}]
    assert cfg.block_lr_weight == [1.0] * 23
    again = load_config(yaml.safe_load(cfg.to_yaml()), check_paths=False)  # the saved YAML loads back the same
    assert again.network_blocks == cfg.network_blocks and again.block_lr_weight == cfg.block_lr_weight


@pytest.mark.parametrize("raw,field", [
    ({"network_type": "lycoris"}, "network_type"),
    ({"algo": "ia3"}, "algo"),
    ({"network_args": ["algo=glora"]}, "network_args.algo"),
    ({"network_args": ["use_tucker=true"]}, "network_args.use_tucker"),
    ({"network_args": ["preset=attn-mlp"]}, "network_args.preset"),
    ({"network_args": ["up_lr_weight=1,1"]}, "network_args.up_lr_weight"),
    ({"network_module": "networks.dylora"}, "network_module"),
    ({"lokr_factor": 0}, "lokr_factor"),
    ({"block_dims": [4] * 24}, "block_dims"),
    ({"conv_block_dims": [-1] * 25}, "conv_block_dims"),
    ({"block_dims": [4] * 25, "block_alphas": [2] * 23}, "block_dims"),
    ({"network_blocks": [{"rank": 4}]}, "network_blocks[0].pattern"),
    ({"network_blocks": [{"pattern": "x", "dim": 4}]}, "network_blocks[0].dim"),
    ({"task_type": "text-generation", "network_type": "loha"}, "network_type"),
])
def test_bad_network_settings_name_the_key(raw, field):
    with pytest.raises(ConfigError) as exc:
        _load(raw)
    assert exc.value.field == field, str(exc.value)
    assert "\n" not in str(exc.value)
