"""AdaMix (mixture of adaptations): mixture modules, training, mixture checkpoints, merge/fold, CLIs.

Data flows one way: train -> mixture checkpoint -> merge/fold -> export folder -> server/demo.
This package owns the stages up to the export folder; it knows nothing of HTTP or Gradio.

The names below load on first use: ``import adamix_deploy.cli`` (and with it ``adamix-serve``) must not pull
in torch, which the server never needs.
"""

from importlib import import_module

_LAZY = {
    "AdamixError": "adamix_deploy.errors",
    "MixtureAdapter": "adamix_deploy.adapter",
    "MixtureLoRALinear": "adamix_deploy.lora",
    "MixtureModule": "adamix_deploy.mixture",
    "set_routing": "adamix_deploy.mixture",
    "Routing": "adamix_deploy.routing",
}
__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adamix_deploy' has no attribute {name!r}")
