"""AdaMix (mixture of adaptations): mixture modules, training, mixture checkpoints.

Data flows one way: train -> mixture checkpoint -> merge/fold -> export folder -> server/demo.
This package owns the first two stages (and, later, merge/fold); it knows nothing of HTTP or Gradio.
"""

from adamix_deploy.adapter import MixtureAdapter
from adamix_deploy.errors import AdamixError
from adamix_deploy.lora import MixtureLoRALinear
from adamix_deploy.mixture import MixtureModule, set_routing
from adamix_deploy.routing import Routing

__all__ = ["AdamixError", "MixtureAdapter", "MixtureLoRALinear", "MixtureModule", "Routing", "set_routing"]
__version__ = "0.1.0"
