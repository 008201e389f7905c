"""Models by name: ``build_model(name, num_classes, in_channels)``; ``list_models()``."""

from qfi_cli.models import resnet, simplenet, small, vit  # noqa: F401  (registers the models)
from qfi_cli.models.norm import NORMS, norm_layer
from qfi_cli.models.registry import MODELS, build_model, input_size, list_models, register_model
from qfi_cli.models.user import build_user_model, load_float_weights, model_label

__all__ = ["MODELS", "NORMS", "build_model", "build_user_model", "input_size", "list_models", "load_float_weights",
           "model_label", "norm_layer", "register_model"]
