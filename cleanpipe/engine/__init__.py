"""The one training engine: device-resident data, batched augmentation, one loop for every method.

Its modules import torch lazily (``cleanpipe.lazy``), so importing the engine costs nothing until it trains.
"""

from cleanpipe.engine.data import Augment, DeviceData, StrongView
from cleanpipe.engine.loop import (
    DEVICES,
    TrainConfig,
    device_name,
    fit,
    place_nets,
    predict_proba,
    resolve_device,
)
from cleanpipe.engine.method import Method, Mixup, Standard, Step

__all__ = [
    "Augment", "DEVICES", "DeviceData", "StrongView", "Method", "Mixup", "Standard", "Step", "TrainConfig",
    "device_name", "fit", "place_nets", "predict_proba", "resolve_device",
]
