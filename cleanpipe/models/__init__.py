"""The model registry: a concrete name -> constructor(input shape, number of classes, **arguments).

A leaf: it knows architectures, not data. Which network ``auto`` means, and the recipe's arguments of a
network (the small CNN's width), are :mod:`cleanpipe.recipes`' to choose; a saved model records its
arguments, so it rebuilds whatever the recipes say later. ``logreg`` is scikit-learn's logistic
regression, trained outside the torch engine. The networks themselves are in :mod:`cleanpipe.models.nets`,
imported on first use (their classes subclass ``torch.nn.Module``, and ``cleanpipe --help`` imports no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from cleanpipe.lazy import lazy_module
from cleanpipe.validation import ParameterError

nets = lazy_module("cleanpipe.models.nets")  # torch at import time: loaded when a network is first built
F = lazy_module("torch.nn.functional")


@dataclass(frozen=True)
class ModelInfo:
    build: Callable[[tuple[int, ...], int], object]
    inputs: str  # "image", "table" or "any"
    summary: str
    min_side: int = 1  # smallest image side the network's pooling leaves room for
    wider: str | None = None  # the same network wider (Noisy Student's student: "equal or larger")
    train: dict = field(default_factory=dict)  # engine settings the network is made for (TrainConfig fields)
    network: bool = True  # a torch network the engine trains (logreg is not)


def _small_cnn(shape, k, *, width: int):  # no default: the width is the recipes' (recipes.network_arguments)
    return nets.SmallCNN(shape[0], k, size=min(shape[1:]), width=width)


def _wrn28(widen: int):
    return lambda shape, k: nets.WRN28(shape[0], k, widen=widen)


def _mlp128(shape, k):
    return nets.MLP(math.prod(shape), k, hidden=128, dropout=0.0)


def _logreg(shape, k):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _plain(cls_name: str):
    # nets.<cls_name>(channels or features, classes): the networks with no other argument
    return lambda shape, k: getattr(nets, cls_name)(shape[0], k)


MODELS: dict[str, ModelInfo] = {
    "small_cnn": ModelInfo(_small_cnn, "image", "3 conv blocks of `width` channels (the recipes: 32 on <=16 px, 16 above): "
                           "digits and 28x28 images", wider="small_cnn_wide"),
    "small_cnn_wide": ModelInfo(_small_cnn, "image", "small_cnn at twice the recipes' width: Noisy Student's larger student"),
    "cnn9": ModelInfo(_plain("CNN9"), "image", "the 9-layer CNN of Co-teaching, for 32x32 images",
                      min_side=12),  # two 2x pools, then a 3x3 conv without padding
    "airbench": ModelInfo(_plain("AirbenchNet"), "image", "airbench-class net: frozen patch whitening, 3 conv groups (64/256/256), "
                          "frozen-scale BatchNorm, look-ahead; fast 32x32 training", min_side=16,
                          # airbench's momentum and its look-ahead every 5 steps
                          train={"momentum": 0.85, "lookahead": 5}),
    "preact_resnet18": ModelInfo(_plain("PreActResNet18"), "image", "PreAct ResNet-18 for 32x32 images"),
    "resnet32": ModelInfo(_plain("ResNet32"), "image", "the CIFAR ResNet-32 of INCV (3 x 5 basic blocks, 16/32/64 channels)"),
    "wrn28_10": ModelInfo(_wrn28(10), "image", "WRN-28-10 as in IEG (36M parameters; parameter-free shortcuts), for 32x32 images"),
    "wrn28_2": ModelInfo(_wrn28(2), "image", "the same WRN-28 at width 2 (1.5M parameters): a cheaper stand-in"),
    "resnet29": ModelInfo(_plain("ResNet29"), "image", "ResNet-29 v2 (bottlenecks) as in IEG, 0.84M parameters, for 32x32 images"),
    "mlp": ModelInfo(_plain("MLP"), "table", "2 hidden layers of 256 with BatchNorm and dropout, for tables/features"),
    "mlp128": ModelInfo(_mlp128, "any", "2 hidden layers of 128, no dropout, on features or raw pixels: "
                        "INCV's and the theory check's network for grey and small images"),
    "logreg": ModelInfo(_logreg, "table", "scikit-learn logistic regression (standardised features)", network=False),
}


def check_model(name: str, input_shape: tuple[int, ...], *, network: bool = False) -> ModelInfo:
    """The registry entry of ``name`` if it suits data of ``input_shape``, else a ParameterError naming ``model``.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (``auto`` is resolved by the recipes before this).
    input_shape : tuple of int
        One example's shape: ``(C, H, W)`` images or ``(D,)`` features.
    network : bool
        Also require a torch network (the engine's training methods, INCV and the theory check train one).
    """
    if name == "auto":
        raise ParameterError("model", "is auto, which the recipes resolve (cleanpipe.recipes.auto_model) before a "
                             "model is built")
    if name not in MODELS:
        raise ParameterError("model", f"{{name}}: unknown model {name!r}; choose auto or one of {', '.join(MODELS)}")
    info = MODELS[name]
    is_image = len(input_shape) == 3
    if info.inputs != "any" and (info.inputs == "image") != is_image:
        raise ParameterError("model", f"{name!r} takes {info.inputs} data but this dataset is "
                             f"{'images' if is_image else 'a table'}; choose auto or a model for "
                             f"{'images' if is_image else 'tables'}")
    if is_image and min(input_shape[1:]) < info.min_side:
        raise ParameterError("model", f"{name!r} needs images of at least {info.min_side}x{info.min_side} but this "
                             f"dataset's are {input_shape[1]}x{input_shape[2]}; choose auto")
    if network and not info.network:
        raise ParameterError("model", f"{name!r} is not a network; this trains networks (e.g. mlp)")
    return info


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, **arguments):
    """A fresh, untrained model of a concrete ``name`` (checked by :func:`check_model`).

    ``arguments`` are the builder's own (``width``, required, for ``small_cnn`` and ``small_cnn_wide``);
    what a saved model records as its ``architecture``. :func:`cleanpipe.recipes.build_network` supplies the
    recipe's.
    """
    return check_model(name, input_shape).build(tuple(input_shape), n_classes, **arguments)


def add_model_noise(net, dropout: float = 0.0, stochastic_depth: float = 0.0) -> dict:
    """Noisy Student's model noise on a network, in place; both are off in eval mode.

    Dropout of rate ``dropout`` on the input of the final linear layer (``net.head``). Stochastic depth
    on the residual blocks whose skip is the identity: the i-th of the network's n blocks (0-based, in
    module order, counting every block) drops its branch with probability ``stochastic_depth * i / n``
    (Huang et al. 2016's linear decay rule, as Noisy Student uses it; 0.2 gives the last of 16 blocks 0.1875).

    Returns
    -------
    dict
        ``dropout`` (the rate, 0 where the network has no ``head``) and ``stochastic_depth_blocks``
        (how many blocks got a non-zero rate).
    """
    applied = 0.0
    head = getattr(net, "head", None)
    if dropout > 0 and head is not None:
        head.register_forward_pre_hook(lambda m, args: (F.dropout(args[0], dropout, m.training),))
        applied = float(dropout)
    blocks = [m for m in net.modules() if isinstance(m, nets.SkipBlock)]
    n_blocks = 0
    for i, block in enumerate(blocks):
        if block.identity_skip and stochastic_depth > 0 and i > 0:
            block.drop_path = stochastic_depth * i / len(blocks)
            n_blocks += 1
    return {"dropout": applied, "stochastic_depth_blocks": n_blocks}
