"""The one training engine: device-resident data, batched augmentation, one loop for every method."""

from importlib import import_module

# Imported on first use (PEP 562): `from cleanpipe.engine.method import Method` must not import torch.
_HOMES = {"Augment": "data", "DeviceData": "data", "StrongView": "data", "TrainConfig": "loop",
          "device_name": "loop", "fit": "loop", "place_nets": "loop", "predict_proba": "loop",
          "resolve_device": "loop", "Method": "method", "Standard": "method", "Step": "method"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"cleanpipe.engine.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'cleanpipe.engine' has no attribute {name!r}")

__all__ = [
    "Augment", "DeviceData", "StrongView", "Method", "Standard", "Step", "TrainConfig",
    "device_name", "fit", "place_nets", "predict_proba", "resolve_device",
]
