"""The dataset on the device and batched augmentation (airbench style: no DataLoader)."""

from __future__ import annotations

import numpy as np

from cleanpipe.lazy import lazy_module

torch = lazy_module("torch")


STREAM_SHARE = 0.5  # of the free CUDA memory the dataset may take before it is streamed from host memory


def device_budget(device: torch.device, budget: int | None = None) -> int | None:
    """Bytes of device memory the dataset may take: ``budget`` if given, else half the free CUDA memory;
    None (no limit) on the CPU, where host memory is the device's."""
    if budget is not None:
        return int(budget)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * STREAM_SHARE)
    return None


def _host_stats(X: torch.Tensor, fit_rows, is_image: bool, device: torch.device, chunk: int = 8192):
    """Mean and std (unbiased) of streamed data in row chunks with float64 sums: no full-size float copy on the host."""
    rows = np.arange(len(X)) if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
    dims = (0, 2, 3) if is_image else (0,)
    total = total_sq = None
    count = 0
    for s in range(0, len(rows), chunk):
        x = X[torch.from_numpy(rows[s:s + chunk])].double()
        if is_image:
            x = x / 255.0
        part, part_sq = x.sum(dim=dims), (x * x).sum(dim=dims)
        total = part if total is None else total + part
        total_sq = part_sq if total_sq is None else total_sq + part_sq
        count += x.numel() // part.numel()
    mean = total / count
    std = ((total_sq - count * mean * mean) / max(count - 1, 1)).clamp_min(0).sqrt()
    shape = (1, -1, 1, 1) if is_image else (1, -1)
    floor = 1e-3 if is_image else 1e-6
    return mean.float().view(shape).to(device), std.float().clamp_min(floor).view(shape).to(device)


class DeviceData:
    """All features as one tensor on the device; batches are sliced and augmented there.

    Images stay uint8 (N, C, H, W) until a batch is taken, which keeps 50,000 CIFAR
    images at 150 MB. Normalisation statistics come from the rows given as ``fit_rows``
    (the training part only), so held-out rows never leak into them.

    Data larger than the device budget stay in host memory (pinned, on CUDA) and each batch is
    gathered there and copied over without blocking (``streamed``): the same batches, the same
    numbers on the CPU, at the cost of one host-to-device copy per batch.

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) images or float32 (N, D) features.
    device : torch.device
    fit_rows : np.ndarray, optional
        int indices whose statistics normalise every batch; default all rows.
    stats : DeviceData, optional
        Normalise with another array's statistics instead (a test split scored like its training data).
    budget : int, optional
        Device bytes the features may take (:func:`device_budget`); beyond it they are streamed.
    """

    def __init__(self, X: np.ndarray, device: torch.device, fit_rows: np.ndarray | None = None,
                 stats: "DeviceData | None" = None, budget: int | None = None) -> None:
        self.device = device
        self.is_image = X.ndim == 4
        X = np.ascontiguousarray(X)
        if not X.flags.writeable:  # torch wants writable memory (np.frombuffer, memory maps)
            X = X.copy()
        limit = device_budget(device, budget)
        self.streamed = limit is not None and X.nbytes > limit
        host = torch.from_numpy(X)
        if self.streamed:
            self.X = host
            if device.type == "cuda":
                try:  # pinned pages make the copies asynchronous; without them they still work
                    self.X = host.pin_memory()
                except RuntimeError:
                    pass
            self._buffers: list = []  # pinned staging buffers, used in turn, each with its copy's event
        else:
            self.X = host.to(device)
        if stats is not None:
            self.mean, self.std = stats.mean.to(device), stats.std.to(device)
            return
        if self.streamed and device.type != "cpu":
            self.mean, self.std = _host_stats(self.X, fit_rows, self.is_image, device)
            return
        rows = None if fit_rows is None else torch.as_tensor(fit_rows, device=self.X.device)
        ref = self.X if rows is None else self.X[rows]
        if self.is_image:
            ref = ref.float() / 255.0
            self.mean = ref.mean(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)
            self.std = ref.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1).to(device)
        else:
            self.mean = ref.mean(dim=0, keepdim=True).to(device)
            self.std = ref.std(dim=0, keepdim=True).clamp_min(1e-6).to(device)

    def __len__(self) -> int:
        return len(self.X)

    def rows(self, idx: torch.Tensor, host_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``idx`` as stored (uint8 images or float32 features), on the device.

        ``host_idx``: the same indices already in host memory, so that streamed data need not wait
        for the device to hand them back (which would stall every step).
        """
        if not self.streamed:
            return self.X[idx]
        idx = host_idx if host_idx is not None else idx.cpu()
        if self.device.type != "cuda":
            return self.X[idx]
        # Gather into a pinned buffer and copy without blocking; a buffer is reused only once its copy is done.
        shape = (len(idx), *self.X.shape[1:])
        if len(self._buffers) < 2 or self._buffers[0][0].shape != shape:
            self._buffers = [(torch.empty(shape, dtype=self.X.dtype).pin_memory(), None) for _ in range(2)]
        buf, event = self._buffers.pop(0)
        if event is not None:
            event.synchronize()
        torch.index_select(self.X, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._buffers.append((buf, event))
        return out

    def batch(self, idx: torch.Tensor, augment: "Augment | None" = None, generator: torch.Generator | None = None,
              host_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 normalised features of rows ``idx``, augmented as a whole batch."""
        return self.normalize(self.batch_raw(idx, augment, generator, host_idx))

    def batch_raw(self, idx: torch.Tensor, augment: "Augment | None" = None,
                  generator: torch.Generator | None = None, host_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``idx`` before normalisation: images as float32 in [0, 1] (augmented), features as stored."""
        x = self.rows(idx, host_idx)
        if self.is_image:
            x = x.float() / 255.0
            if augment is not None:
                x = augment(x, generator)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise a raw batch with the training rows' statistics."""
        return (x - self.mean) / self.std


class Augment:
    """Random translation (reflect-pad and crop) and optional horizontal flips, per example, on a batch.

    ``policy`` adds kornia's AutoAugment or RandAugment after the geometric part, for
    methods that need strong augmentation (IEG, Noisy Student).
    """

    def __init__(self, pad: int, flip: bool, policy: str | None = None, magnitude: float = 10.0) -> None:
        self.pad, self.flip, self.policy, self.magnitude = pad, flip, policy, magnitude
        self._policy = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        dev = x.device
        if self.pad > 0:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
            # Drawn where the data lives: a host-to-device copy per step would stall a GPU.
            dy = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=dev)
            dx = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=dev)
            # Each example's crop out of its padded copy: two gathers, no Python loop.
            rows = (dy[:, None] + torch.arange(H, device=dev))[:, None, :, None].expand(B, C, H, W + 2 * p)
            cols = (dx[:, None] + torch.arange(W, device=dev))[:, None, None, :].expand(B, C, H, W)
            x = padded.gather(2, rows).gather(3, cols)
        if self.flip:
            mask = torch.rand(B, generator=generator, device=dev) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if self.policy:
            x = self._strong(x)
        return x

    def _strong(self, x: torch.Tensor) -> torch.Tensor:
        if self._policy is None:
            from kornia.augmentation import auto

            self._policy = (
                auto.AutoAugment(policy="cifar10") if self.policy == "autoaugment" else auto.RandAugment(n=2, m=self.magnitude)
            ).to(x.device)
        if x.shape[1] == 1:  # kornia's colour ops want RGB: grey as 3 equal channels, averaged back
            return self._policy(x.expand(-1, 3, -1, -1)).mean(1, keepdim=True).clamp_(0.0, 1.0)
        return self._policy(x).clamp_(0.0, 1.0)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square per image, centred uniformly and clipped at the borders (Cutout)."""
    B, _, H, W = x.shape
    dev = x.device
    cy = torch.randint(0, H, (B,), generator=generator, device=dev)[:, None, None]
    cx = torch.randint(0, W, (B,), generator=generator, device=dev)[:, None, None]
    ys = torch.arange(H, device=dev)[None, :, None]
    xs = torch.arange(W, device=dev)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside[:, None], 0.0)



class StrongView:
    """A strongly augmented copy of a training batch, for IEG's second view and Noisy Student's noised student.

    Images: the policy (kornia's RandAugment or AutoAugment, on the whole batch) applied to the weakly
    augmented batch, then pad-crop by an eighth of the side (flips where the data flips) and Cutout of
    ``cutout`` of the side (half, as IEG and Noisy Student's small-image pipeline do; 0 for none).
    Tables: Gaussian noise of 0.2 standard deviations on the standardised features, then 20% of the
    features zeroed (feature dropout).

    Parameters
    ----------
    data : DeviceData
    policy : {'randaugment', 'autoaugment'}
    flip : bool
        Mirror images at random (the weak augmentation's setting).
    cutout : float
        Side of the Cutout square as a share of the image side.
    magnitude : float
        RandAugment's magnitude on kornia's scale (0-30).
    """

    def __init__(self, data: DeviceData, policy: str, flip: bool = False, cutout: float = 0.5,
                 magnitude: float = 10.0) -> None:
        self.data = data
        if data.is_image:
            size = min(data.X.shape[2:])
            self.policy = Augment(pad=0, flip=False, policy=policy, magnitude=magnitude)
            self.geometric = Augment(pad=max(1, round(size / 8)), flip=flip)
            self.cutout = int(round(size * cutout))

    def __call__(self, x_raw: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The strong view of a batch: ``x_raw`` as ``Step.x_raw``, ``x`` the normalised batch (its layout is kept)."""
        if not self.data.is_image:
            noise = torch.randn(x.shape, generator=generator, device=x.device) * 0.2
            keep = (torch.rand(x.shape, generator=generator, device=x.device) >= 0.2).float()
            return (x + noise) * keep
        out = self.geometric(self.policy(x_raw, generator), generator)
        if self.cutout > 0:
            out = cutout(out, self.cutout, generator)
        out = self.data.normalize(out)
        if x.is_contiguous(memory_format=torch.channels_last):  # the engine hands channels_last batches to networks
            out = out.contiguous(memory_format=torch.channels_last)
        return out
