"""cdkd: data-free distillation of a teacher ensemble into one compact multi-header student.

The algorithm is plain PyTorch (no Ray import here); Ray only places and drives it.
"""
from .config import Config, load_config, make_config
from .engine import Distiller
from .errors import CdkdError
from .models import create_model, list_models

__all__ = ["Config", "load_config", "make_config", "Distiller", "CdkdError", "create_model", "list_models"]
__version__ = "0.1.0"
