"""Dataset tools: caption storage, image checks, tag statistics and bulk caption edits with undo.

Pure stdlib/numpy/pillow so the WebUI can import them without slowing its start-up; the
captioners (`lora_trainer.caption`) and the dataset UI section are built on these functions.
"""

from lora_trainer.data.images import IMAGE_EXTENSIONS
from lora_trainer.data.tools.atomic import atomic_write_text
from lora_trainer.data.tools.bulk import BulkResult, add_trigger, remove_tag, replace_tag, undo_last
from lora_trainer.data.tools.checks import CheckReport, Issue, check_images, perceptual_hash
from lora_trainer.data.tools.store import CaptionStore, list_images
from lora_trainer.data.tools.tags import join_tags, norm_tag, put_first, split_tags, tag_frequency

__all__ = [
    "IMAGE_EXTENSIONS", "BulkResult", "CaptionStore", "CheckReport", "Issue", "add_trigger",
    "atomic_write_text", "check_images", "join_tags", "list_images", "norm_tag", "perceptual_hash",
    "put_first", "remove_tag", "replace_tag", "split_tags", "tag_frequency", "undo_last",
]
