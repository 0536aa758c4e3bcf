"""AdaMix (mixture of adaptations): the training stage. Mixture modules, training, mixture checkpoints,
importers, merge/fold as pure functions, and the commands adamix-train, adamix-eval, adamix-models.

Data flows one way: train -> mixture checkpoint -> merge/fold -> export folder -> server/demo. The other
stages install under this name (``adamix_deploy.exporters``, ``adamix_deploy.serving``, ``adamix_deploy.demo``,
``adamix_deploy.quickstart``) but live in their own top-level folders; this package imports none of them,
only the torch-free contracts every stage shares (``adamix_deploy.contracts``, the top-level ``contracts/``).

The names below load on first use: importing any subpackage (the server's, say) runs this file, and must not
pull in torch, which the server never needs.
"""

from importlib import import_module

_LAZY = {
    "AdamixError": "adamix_deploy.contracts.errors",
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
