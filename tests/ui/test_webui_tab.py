"""The Trainer tab as the WebUI builds it (a host with a loaded checkpoint): model options hidden,
base_model never sent, the plan names the loaded checkpoint."""

from __future__ import annotations

from lora_trainer.hosts.base import Host
from lora_trainer.ui import form as F
from lora_trainer.ui import trainer_tab as T


class LoadedHost(Host):
    name = "webui"

    def loaded_model_name(self) -> str:
        return "v1-5-pruned.safetensors"


def test_webui_tab_hides_options_of_the_engine_loaded_model(tmp_path):
    host = LoadedHost(str(tmp_path))
    tab = T.build_trainer_tab(host)
    fields = tab.lt_components["fields"]
    shown = {f.info.name: f.component.visible for f in fields}
    assert all(shown[name] is False for name in F.WEBUI_HIDDEN), shown
    assert shown["train_data_dir"] and shown["v_parameterization"]
    # FLUX.1 in Forge: the loaded checkpoint's storage and Forge's memory settings apply, not these
    assert not any(shown[name] for name in ("fp8_base", "blocks_to_swap", "clip_l_path", "t5xxl_path"))
    values = [f.component.value for f in fields]
    values[[f.info.name for f in fields].index("output_name")] = "mine"
    values[[f.info.name for f in fields].index("base_model")] = "/somewhere/else.safetensors"
    config = T.form_config(host, fields, values, str(tmp_path))
    assert "base_model" not in config and config["output_name"] == "mine"


def test_presets_choosing_their_own_model_are_not_offered_in_the_webui(tmp_path):
    assert "quick_try" in T.presets(Host(str(tmp_path)))
    offered = T.presets(LoadedHost(str(tmp_path)))
    assert "quick_try" not in offered and "style" in offered
