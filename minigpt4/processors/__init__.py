"""Image and caption processors, looked up by the ``name`` of a ``vis_processor``/``text_processor``
entry (``registry.get_processor_class(name).from_config(entry)``)."""

from minigpt4.processors.base_processor import BaseProcessor
from minigpt4.processors.blip_processors import (
    Blip2ImageEvalProcessor,
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
)

__all__ = ["BaseProcessor", "Blip2ImageEvalProcessor", "Blip2ImageTrainProcessor", "BlipCaptionProcessor"]
