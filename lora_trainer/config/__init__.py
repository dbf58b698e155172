"""One training config schema: YAML in/out, `--set` overrides, validation with field-named errors.

Split by concern: `schema` (the `TrainConfig` dataclass: fields, defaults, help, aliases),
`loading` (files, sections, aliases, kohya keys, typed parsing), `validation` (checks that name
the field) and `docs` (`python -m lora_trainer.config --markdown [PATH]` writes docs/config.md).
"""

from lora_trainer.config.docs import markdown_reference
from lora_trainer.config.loading import SPECIAL_KEYS, fit_bucket_defaults, load_config, parse_override
from lora_trainer.config.schema import (
    BUILTIN_PREFIX,
    MODEL_EXTENSIONS,
    SECTION_ALIASES,
    SECTIONS,
    FieldInfo,
    TrainConfig,
    config_fields,
)
from lora_trainer.config.validation import validate_config

__all__ = ["BUILTIN_PREFIX", "MODEL_EXTENSIONS", "SECTIONS", "SECTION_ALIASES", "SPECIAL_KEYS", "FieldInfo",
           "TrainConfig", "config_fields", "fit_bucket_defaults", "load_config", "markdown_reference",
           "parse_override", "validate_config"]
