"""Block-wise ranks and learning rates (kohya block_dims / block_lr_weight, include/exclude patterns)
resolved on the real tiny UNets into the network's modules, its optimizer groups and the plan."""

from __future__ import annotations

import pytest
import torch
from lora_test_models import tiny_te, tiny_unet

from lora_trainer.errors import ConfigError
from lora_trainer.lora.blocks import block_index, block_label, plan_lines, resolve_targets, spec_plan_lines
from lora_trainer.lora.discovery import text_encoder_targets, unet_targets
from lora_trainer.lora.estimate import adapter_params, arch_dims
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.lora.spec import BlockRule, NetworkSpec


@pytest.mark.parametrize("name,label", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
    ("lora_unet_down_blocks_0_resnets_1_conv1", "IN02"),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
    ("lora_unet_down_blocks_3_resnets_1_conv2", "IN11"),
    ("lora_unet_mid_block_attentions_0_proj_out", "MID"),
    ("lora_unet_up_blocks_0_resnets_0_conv1", "OUT00"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", "OUT11"),
    ("lora_unet_input_blocks_4_1_proj_in", "IN04"),       # SDXL (LDM names)
    ("lora_unet_middle_block_1_proj_in", "MID1"),
    ("lora_unet_output_blocks_8_0_skip_connection", "OUT08"),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "TE"),
])
def test_block_labels_follow_kohyas_index(name, label):
    assert block_label(name) == label


def test_block_index_counts():
    assert block_index("lora_unet_up_blocks_3_attentions_2_proj_out") == (24, 25)
    assert block_index("lora_unet_output_blocks_8_1_proj_out") == (21, 23)


def test_block_dims_lrs_and_patterns_reach_modules_groups_and_plan():
    unet, te = tiny_unet("sd1"), tiny_te()
    targets = unet_targets(unet, "sd1", conv=True) + text_encoder_targets(te)
    dims = tuple(i % 4 + 1 for i in range(25))
    lrw = tuple(0.0 if i == 12 else (0.5 if i < 12 else 1.0) for i in range(25))  # MID off, IN at half
    spec = NetworkSpec("loha", rank=8, alpha=8.0, conv_rank=2, block_dims=dims, block_alphas=dims,
                       block_lr_weight=lrw, exclude=("*attn2*",),
                       rules=(BlockRule("lora_unet_up_blocks_3_*", rank=6, lr_weight=2.0),
                              BlockRule("*_ff_net_*", exclude=True))).validate()
    net = LoRANetwork(targets, rank=1, spec=spec)
    names = set(net.loras)
    assert not any("attn2" in n or "ff_net" in n or "mid_block" in n for n in names)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert net.loras["lora_unet_down_blocks_0_attentions_0_proj_in"].rank == dims[1]  # IN01
    assert net.loras["lora_unet_down_blocks_1_attentions_1_proj_in"].rank == dims[5]  # IN05
    assert net.loras["lora_unet_up_blocks_3_attentions_2_proj_out"].rank == 6        # rule wins
    assert net.loras["lora_unet_down_blocks_0_resnets_0_conv1"].rank == 2            # kxk: conv_rank
    assert net.loras["lora_te_text_model_encoder_layers_0_mlp_fc1"].rank == 8        # TE: run's rank
    groups = {g["name"]: g for g in net.param_groups(1e-4, 5e-5)}
    assert set(groups) == {"unet", "unet x0.5", "unet x2", "text_encoder"}
    assert groups["unet x0.5"]["lr"] == pytest.approx(5e-5) and groups["unet x2"]["lr"] == pytest.approx(2e-4)
    up3 = {id(p) for p in net.loras["lora_unet_up_blocks_3_attentions_2_proj_out"].parameters()}
    assert up3 <= {id(p) for p in groups["unet x2"]["params"]}
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(net.parameters()))
    lines = plan_lines(net.plans.values(), 1e-4, 5e-5)
    assert any(line.split()[:2] == ["unet", "IN01"] and "rank    2" in line and "lr 5e-05" in line for line in lines)
    assert not any(" MID " in line for line in lines)
    assert any(line.startswith("text_encoder TE") for line in lines)


def test_include_only_and_block_list_length_checked_against_the_model():
    unet = tiny_unet("sdxl")
    targets = unet_targets(unet, "sdxl")
    plans = resolve_targets(targets, NetworkSpec(include=("lora_unet_output_blocks_*",)))
    assert plans and all(p.block.startswith("OUT") for p in plans)
    with pytest.raises(ConfigError, match="block_dims.*25 values but this model's UNet has 23"):
        resolve_targets(targets, NetworkSpec(block_dims=(4,) * 25))


def test_block_rank_reaches_the_saved_file():
    unet = tiny_unet("sd1")
    spec = NetworkSpec("lora", rank=4, rules=(BlockRule("lora_unet_up_blocks_*", rank=2, alpha=1.0),))
    sd = LoRANetwork(unet_targets(unet, "sd1"), rank=1, spec=spec).kohya_state_dict(torch.float32)
    ups = [k for k in sd if k.startswith("lora_unet_up_blocks_") and k.endswith("lora_down.weight")]
    downs = [k for k in sd if k.startswith("lora_unet_down_blocks_") and k.endswith("lora_down.weight")]
    assert ups and all(sd[k].shape[0] == 2 for k in ups) and all(sd[k].shape[0] == 4 for k in downs)


def test_spec_plan_lines_without_a_model():
    spec = NetworkSpec(block_dims=(4,) * 12 + (8,) + (2,) * 12, block_lr_weight=(1.0,) * 22 + (0.0,),
                       exclude=("*attn2*",), rules=(BlockRule("lora_unet_up_*", rank=16, lr_weight=0.5),))
    assert spec_plan_lines(spec) == [
        "block_dims: IN00-IN11 4, MID 8, OUT00-OUT11 2",
        "block_lr_weight: EMB-OUT08 1, OUT 0",
        "never modules matching: *attn2*",
        "lora_unet_up_*: rank 16, lr x 0.5",
    ]


@pytest.mark.parametrize("ntype,opt", [("lora", {}), ("locon", {}), ("loha", {}), ("lokr", {}),
                                       ("lokr", {"lokr_factor": 4, "lokr_full_rank": True}), ("dora", {})])
def test_parameter_estimate_equals_the_built_network(ntype, opt):
    unet = tiny_unet("sd1")
    targets = unet_targets(unet, "sd1", conv=True)
    spec = NetworkSpec(ntype, rank=4, conv_rank=2, **opt)
    net = LoRANetwork(targets, rank=1, spec=spec)
    layers = []
    for t in targets:
        m = t.module
        if isinstance(m, torch.nn.Conv2d):
            layers.append((m.in_channels, m.out_channels, m.kernel_size[0], 1))
        else:
            layers.append((m.in_features, m.out_features, 1, 1))
    assert adapter_params(spec, layers) == (net.num_trainable(), len(net.loras))


def test_arch_dims_let_a_lokr_factor_be_checked_before_loading():
    NetworkSpec("lokr", lokr_factor=16).validate(arch_dims("sdxl"))
    with pytest.raises(ConfigError, match="lokr_factor.*256 does not divide.*320, 640"):
        NetworkSpec("lokr", lokr_factor=256).validate(arch_dims("sd1"))


def test_rules_from_config_values_and_errors_name_the_entry():
    from lora_trainer.lora.spec import rules_from_raw

    rules = rules_from_raw([{"pattern": "lora_unet_up_*", "rank": 16, "lr_weight": "0.5"}, "*attn2*"])
    assert rules == (BlockRule("lora_unet_up_*", rank=16, lr_weight=0.5), BlockRule("*attn2*", exclude=True))
    with pytest.raises(ConfigError) as e:
        rules_from_raw([{"pattern": "x"}, {"pattern": "y", "rnak": 4}])
    assert e.value.field == "network_blocks[1].rnak"
    with pytest.raises(ConfigError, match=r"network_blocks\[0\].pattern"):
        rules_from_raw([{"rank": 4}])
