"""Models by name: ``build_model(name, num_classes, in_channels)``; ``list_models()``."""

from qfi_cli.models import resnet, small  # noqa: F401  (registers the models)
from qfi_cli.models.registry import MODELS, build_model, list_models, register_model

__all__ = ["MODELS", "build_model", "list_models", "register_model"]
