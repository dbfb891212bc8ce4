"""SGD with momentum for the engine, on torch's multi-tensor (``_foreach``) kernels.

The same update as ``torch.optim.SGD`` (no dampening; weight decay added to the gradient; Nesterov's
variant adds the momentum once more), checked against it step for step in the tests. Why not torch's own:
every ``torch.optim.Optimizer`` step imports ``torch._dynamo`` (0.9 s on 2 CPU cores), a third of a
one-epoch crossval's start-up on MNIST. AdamW (tables) stays torch's.
"""

from __future__ import annotations

from typing import Iterable

from cleanpipe.lazy import lazy_module, no_grad

torch = lazy_module("torch")



class SGD:
    """Stochastic gradient descent with (Nesterov) momentum over parameter groups.

    Parameters
    ----------
    groups : iterable of dict
        Each with ``params`` (tensors) and optionally ``lr``, ``weight_decay``, ``momentum``, ``nesterov``;
        missing keys take the defaults below. ``param_groups[i]["lr"]`` may be changed between steps.
    lr, momentum : float
    nesterov : bool
    weight_decay : float

    ``state[p]["momentum_buffer"]`` is each parameter's momentum (as in torch, which IEG's look-ahead
    reads); ``state_dict``/``load_state_dict`` hold plain tensors and numbers (``weights_only`` loads).
    """

    def __init__(self, groups: Iterable[dict], lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        every = [id(p) for g in self.param_groups for p in g["params"]]
        if len(every) != len(set(every)):
            raise ValueError("a parameter appears in more than one group")
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @no_grad
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if g["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=g["weight_decay"])
            m = g["momentum"]
            if m:
                old = [i for i, p in enumerate(params) if p in self.state]
                if old:
                    bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
                    torch._foreach_mul_(bufs, m)
                    torch._foreach_add_(bufs, [grads[i] for i in old])
                for i, p in enumerate(params):  # a parameter's first step: its buffer is the gradient itself
                    if p not in self.state:
                        self.state[p] = {"momentum_buffer": grads[i].clone()}
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                grads = torch._foreach_add(grads, bufs, alpha=m) if g["nesterov"] else bufs
            torch._foreach_add_(params, grads, alpha=-g["lr"])

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return {
            "state": {index[p]: {"momentum_buffer": s["momentum_buffer"]} for p, s in self.state.items()},
            "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                              "params": [index[p] for p in g["params"]]} for g in self.param_groups],
        }

    def load_state_dict(self, state: dict) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        sizes = [len(g["params"]) for g in state["param_groups"]]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"the saved state has parameter groups of sizes {sizes}, this optimizer "
                             f"{[len(g['params']) for g in self.param_groups]}")
        for g, saved in zip(self.param_groups, state["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {params[int(i)]: {"momentum_buffer": s["momentum_buffer"].to(params[int(i)].device)}
                      for i, s in state["state"].items()}
