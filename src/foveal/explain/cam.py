"""Class activation maps (CAM) and Grad-CAM.

References:
    Bolei Zhou, Aditya Khosla, Agata Lapedriza, Aude Oliva and Antonio Torralba, "Learning Deep Features for
    Discriminative Localization", CVPR 2016 (arXiv:1512.04150). For a network that ends in global average pooling
    (GAP) and one linear layer, the map of class c is ``M_c(x, y) = Σ_k w_k^c f_k(x, y)``, with f_k the last conv
    feature maps and w^c the classifier row of c; the class score is the spatial mean of M_c plus the bias.

    Ramprasaath R. Selvaraju, Michael Cogswell, Abhishek Das, Ramakrishna Vedantam, Devi Parikh and Dhruv Batra,
    "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017 (arXiv:1610.02391).
    ``ReLU(Σ_k α_k A_k)`` with α_k the spatial mean of ∂score/∂A_k, for any layer A and any differentiable score.

:class:`CAM` needs one forward pass and no backward pass: a forward hook keeps f_k, one einsum gives the maps of every
requested class of every image. :class:`GradCAM` explains any model output through a *target*: a callable that maps
the model's raw output to one score per image (:class:`ClassTarget`, :class:`MaskTarget`). Both are context managers
that put the model in eval mode and register their hooks on entry, and on exit remove the hooks and give every module
back its previous training flag; nothing else about the model changes (Grad-CAM never touches parameter gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from foveal.errors import FovealError
from foveal.explain.upsample import check_grid, grid_of, upsample_maps

_IDENTITY_TOLERANCE = {torch.float64: 1e-3, torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}
"""Relative tolerance of the CAM identity check by the number format the model ran in: bf16 keeps 8 bits of mantissa
(a rounding step of 2^-8 = 0.4 % per value, and logits that sum hundreds of rounded products), fp16 11 bits. A model
that is not GAP + linear misses by the order of the logits themselves, far above these."""
"""Relative tolerance of the GAP identity check (classifier(mean of the features) must give the model's logits)."""


@dataclass(frozen=True)
class CAMResult:
    """Class activation maps of a batch.

    Attributes:
        maps: (N, k, H, W) raw maps ``M_c = Σ_j w_j^c f_j``, one per class (not normalised, no class bias), at the input
            size when upsampled (bilinear), else at the feature-map size.
        classes: (N, k) int64 class of each map (the top-k predictions, sorted by decreasing score, unless given).
        scores: (N, k) soft-max probability of each map's class.
        logits: (N, num_classes) the model's output.
    """

    maps: Tensor
    classes: Tensor
    scores: Tensor
    logits: Tensor

    def normalized(self, relative_to: str = "range") -> Tensor:
        """The maps scaled to [0, 1], each on its own.

        Args:
            relative_to: ``"range"``: (m − min) / (max − min); ``"max"``: max(m, 0) / max, the scale of the paper's
                "20 % of the max" threshold. A constant map ("range") or a map with max ≤ 0 ("max") becomes 0.

        Returns:
            (N, k, H, W) float tensor in [0, 1].
        """
        return normalize_maps(self.maps, relative_to)


def normalize_maps(maps: Tensor, relative_to: str = "range") -> Tensor:
    """Scale each (H, W) map of ``maps`` (…, H, W) to [0, 1]; see :meth:`CAMResult.normalized` for the modes."""
    flat = maps.detach().float().flatten(-2)
    high = flat.amax(-1, keepdim=True)
    if relative_to == "range":
        low = flat.amin(-1, keepdim=True)
        span = high - low
        out = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    elif relative_to == "max":
        out = torch.where(high > 0, flat.clamp_min(0) / high.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    else:
        raise FovealError(f"relative_to must be 'range' or 'max', got {relative_to!r}")
    return out.view(maps.shape)


class Target(Protocol):
    """What Grad-CAM explains: maps the model's raw output (whatever ``forward`` returns: logits, a segmentation map, a
    detector's head outputs) to a differentiable score of shape (N,), one per image. Scores of different images must
    not depend on each other (their sum is differentiated once for the whole batch)."""

    def __call__(self, output: Any) -> Tensor: ...


class ClassTarget:
    """The logit of one class, for classifiers whose output is (N, K).

    Args:
        class_idx: one class for every image (int), or one per image (int64 tensor (N,)).
    """

    def __init__(self, class_idx: int | Tensor) -> None:
        self.class_idx = class_idx

    def __call__(self, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim != 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise FovealError(f"ClassTarget needs logits of shape (N, K), got {shape}; write a target for this output")
        index = _class_index(self.class_idx, output.shape[0], output.shape[1], output.device)
        # a copy: indices made under inference_mode could not be saved for the backward pass
        return output.gather(1, index[:, None].clone()).squeeze(1)


class MaskTarget:
    """The score of one class summed over a region, for segmentation outputs (N, K, H, W) (e.g. a U-Net region).

    Args:
        class_idx: the class whose output channel is summed.
        mask: (H, W) for every image or (N, H, W), bool or float weights, in the output's pixel grid.
    """

    def __init__(self, class_idx: int, mask: Tensor) -> None:
        self.class_idx = int(class_idx)
        self.mask = mask

    def __call__(self, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise FovealError(f"MaskTarget needs a segmentation output of shape (N, K, H, W), got {shape}")
        n, k, h, w = output.shape
        if not 0 <= self.class_idx < k:
            raise FovealError(f"class index {self.class_idx} is out of range: the output has {k} classes (0..{k - 1})")
        mask = self.mask
        if mask.ndim not in (2, 3) or tuple(mask.shape[-2:]) != (h, w) or (mask.ndim == 3 and mask.shape[0] != n):
            raise FovealError(
                f"the mask has shape {tuple(mask.shape)} but the output is {tuple(output.shape)}: give a mask "
                f"({h}, {w}) or ({n}, {h}, {w}) in the output's pixel grid"
            )
        weights = mask.to(device=output.device, dtype=output.dtype).clone()  # see ClassTarget
        return (output[:, self.class_idx] * weights).sum((-2, -1))


class DetectionTarget:
    """The class logit of one detection of a RetinaNet: output ``cls_logits[n, anchor, label]`` (the score the
    detection's box was kept for, before the sigmoid).

    Args:
        anchor: the anchor index of the detection (``postprocess(...)["anchors"]``), one for every image (int) or one
            per image (int64 tensor (N,)).
        label: its class, the same way.
    """

    def __init__(self, anchor: int | Tensor, label: int | Tensor) -> None:
        self.anchor, self.label = anchor, label

    def __call__(self, output: Any) -> Tensor:
        logits = getattr(output, "cls_logits", None)
        if not isinstance(logits, Tensor) or logits.ndim != 3:
            raise FovealError(f"DetectionTarget needs a RetinaNet output with cls_logits (N, A, K), got {type(output)}")
        n, a, k = logits.shape
        anchor = torch.as_tensor(self.anchor, device=logits.device)
        if anchor.is_floating_point() or bool(((anchor < 0) | (anchor >= a)).any()):
            raise FovealError(f"anchor index {anchor.tolist()} is out of range: this output has {a} anchors")
        anchor = _class_index(anchor, n, a, logits.device)
        label = _class_index(self.label, n, k, logits.device)
        return logits[torch.arange(n, device=logits.device), anchor.clone(), label.clone()]


_H = TypeVar("_H", bound="_ModelHooks")


class _ModelHooks:
    """Eval mode + hooks while active; on exit, hooks removed and every module's training flag restored."""

    def __init__(self, model: nn.Module, grid: str | None = None) -> None:
        if grid is not None:
            check_grid(grid)
        self.model = model
        self.grid = grid_of(model) if grid is None else grid
        self._first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        self._handles: list[RemovableHandle] = []
        self._modes: list[tuple[nn.Module, bool]] | None = None

    def _hooks(self) -> list[RemovableHandle]:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """Whether the context is entered (hooks registered, model in eval mode)."""
        return self._modes is not None

    def __enter__(self: _H) -> _H:
        if self._modes is not None:
            raise RuntimeError(f"this {type(self).__name__} is already active; enter it once")
        self._modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            self._handles = self._hooks()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, mode in self._modes or ():
            module.training = mode
        self._modes = None

    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FovealError(f"images must be a tensor of shape (N, C, H, W), got {shape}")
        if not x.is_floating_point():
            raise FovealError(f"images must be floating point (preprocessed as for the model), got {x.dtype}")
        conv = self._first_conv
        if conv is not None and x.shape[1] != conv.in_channels:
            raise FovealError(
                f"the images have {x.shape[1]} channels but the model's first convolution expects "
                f"{conv.in_channels}; convert the images (grayscale ↔ RGB) or use a model built for "
                f"{x.shape[1]} channels"
            )


class CAM(_ModelHooks):
    """Class activation maps of a global-average-pooling + linear classifier, from one forward pass.

    Example::

        with CAM(model) as cam:
            result = cam(images, top_k=5)  # result.maps: (N, 5, H, W)

    Calling it outside a ``with`` block enters and exits around that one call.

    Args:
        model: a classifier whose logits are ``classifier(mean over (h, w) of feature_layer's output)``.
        feature_layer: the module (or its dotted name, e.g. ``"layer4"``) whose output f (N, C, h, w) the pooling
            sees. ``None``: foveal EfficientNet → ``head``; torchvision ResNet → ``layer4``; any other model → the
            last module to output a map of C channels (C = the classifier's input features) larger than 1 × 1.
        classifier: the ``nn.Linear`` (or its name) applied to the pooled features. ``None``: ``get_classifier()``
            (timm), then the attributes ``classifier``, ``fc``, ``head``, then the last layer of an ``nn.Sequential``,
            then the model's only ``nn.Linear``.
        grid: where the feature cells sit on the input, for upsampling: "stride" (cell i on pixel S·i, symmetric
            padding) or "cell" (the middle of its block); ``None``: :func:`foveal.explain.upsample.grid_of` the model.

    The first call checks the CAM identity ``classifier(mean(f)) == logits`` and raises :class:`FovealError` when it
    does not hold (the model has more than pooling + one linear layer after ``feature_layer``).
    """

    def __init__(
        self,
        model: nn.Module,
        feature_layer: str | nn.Module | None = None,
        classifier: str | nn.Linear | None = None,
        grid: str | None = None,
    ) -> None:
        super().__init__(model, grid)
        linear = _auto_classifier(model) if classifier is None else _resolve(model, classifier, "classifier")
        if not isinstance(linear, nn.Linear):
            found = "found none" if linear is None else f"got {type(linear).__name__}"
            raise FovealError(
                f"CAM needs the model's final linear layer ({found}); name it: CAM(model, classifier='fc') "
                "with the name of the nn.Linear that follows global average pooling"
            )
        self.classifier: nn.Linear = linear
        if feature_layer is not None:
            self.feature_layer: nn.Module | None = _resolve(model, feature_layer, "feature_layer")
        elif hasattr(model, "forward_head_features") and getattr(model, "classifier", None) is linear:
            self.feature_layer = model.get_submodule("head")  # foveal's EfficientNet: the 1×1 head conv feeds the GAP
        elif isinstance(getattr(model, "layer4", None), nn.Module) and getattr(model, "fc", None) is linear:
            self.feature_layer = model.get_submodule("layer4")
        else:
            self.feature_layer = None  # found by a probe on the first call
        self._features: Any = None
        self._verified = False

    def _hooks(self) -> list[RemovableHandle]:
        return [] if self.feature_layer is None else [self.feature_layer.register_forward_hook(self._capture)]

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._features = output  # kept for the duration of one call only

    def __call__(
        self, x: Tensor, classes: Tensor | int | None = None, top_k: int = 1, upsample: bool = True
    ) -> CAMResult:
        """Maps of the top-k predicted classes (or of the given classes) of a batch.

        Args:
            x: (N, C, H, W) float images, preprocessed as the model expects.
            classes: ``None`` → the ``top_k`` highest-scoring classes of each image, sorted by score; an int → that
                class for every image; an int64 tensor (N,) → one class per image (e.g. the true class); (N, k) →
                k classes per image; (1, k) → the same k classes for every image.
            top_k: number of predicted classes when ``classes`` is ``None``.
            upsample: resize the maps bilinearly to (H, W); ``False`` keeps the feature-map size (h, w).

        Returns:
            A :class:`CAMResult`.
        """
        if not self.active:
            with self:
                return self(x, classes, top_k, upsample)
        self._check_images(x)
        features, logits = self._forward(x)
        with torch.no_grad():
            if not self._verified:
                self._verify(features, logits)
            index, scores = _select(logits, classes, top_k)
            weights = self.classifier.weight[index].to(features.dtype)  # (N, k, C)
            maps = torch.einsum("nkc,nchw->nkhw", weights, features)
            if upsample:
                maps = upsample_maps(maps, x.shape[-2:], self.grid)
        return CAMResult(maps=maps, classes=index, scores=scores, logits=logits.clone())

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._features = None
        features: Any
        with torch.inference_mode():
            if self.feature_layer is None:
                self.feature_layer, features, logits = _probe(self.model, x, self.classifier.in_features)
                self._handles.append(self.feature_layer.register_forward_hook(self._capture))
            else:
                logits = self.model(x)
                features = self._features
        self._features = None
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise FovealError("CAM needs a model whose forward returns logits of shape (N, num_classes)")
        if not isinstance(features, Tensor) or features.ndim != 4:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise FovealError(
                f"the feature layer gave {got} in the forward pass, not a map (N, C, h, w); CAM needs the layer "
                "whose output global average pooling sees: CAM(model, feature_layer='name')"
            )
        return features, logits

    def _verify(self, features: Tensor, logits: Tensor) -> None:
        if features.shape[1] != self.classifier.in_features:
            raise FovealError(
                f"the feature layer has {features.shape[1]} channels but the classifier takes "
                f"{self.classifier.in_features} features; point feature_layer= at the map the pooling sees"
            )
        bias = None if self.classifier.bias is None else self.classifier.bias.float()
        pooled = F.linear(features.float().mean((2, 3)), self.classifier.weight.float(), bias)
        error = float((pooled - logits.float()).abs().max())
        tolerance = _IDENTITY_TOLERANCE.get(logits.dtype, 3e-2)
        if not error <= tolerance * (1.0 + float(logits.abs().max())):
            raise FovealError(
                "the classifier applied to the average of the feature layer's output does not give the model's "
                f"logits (largest difference {error:.3g}): CAM needs global average pooling + one linear layer after "
                "the feature layer; name both: CAM(model, feature_layer='name', classifier='name')"
            )
        self._verified = True


class GradCAM(_ModelHooks):
    """Grad-CAM of any layer for any differentiable score of the model's output.

    Example::

        with GradCAM(model, "layer4") as gradcam:
            maps = gradcam(images, ClassTarget(labels))  # (N, H, W)

    The forward pass runs without autograd up to the target layer; from there a graph is recorded, and the gradient
    is taken with respect to that layer's output only (no parameter ``.grad`` is written). If the layer runs more
    than once in a forward pass, its last run is explained.

    Args:
        model: any module; its raw output goes to the target.
        target_layer: the module (or dotted name) whose output A (N, C, h, w) is weighted.
        grid: where the layer's cells sit on the input, for upsampling (as for :class:`CAM`).
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, grid: str | None = None) -> None:
        super().__init__(model, grid)
        self.target_layer = _resolve(model, target_layer, "target_layer")
        self._activation: Tensor | None = None
        self._running = False

    def _hooks(self) -> list[RemovableHandle]:
        return [self.target_layer.register_forward_hook(self._capture)]

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        if not self._running:
            return None
        if not isinstance(output, Tensor) or output.ndim != 4:
            raise FovealError("the Grad-CAM target layer must output one tensor of shape (N, C, h, w)")
        torch.set_grad_enabled(True)  # the rest of the forward records a graph; the caller restores the mode
        self._activation = output.detach().requires_grad_(True)
        return self._activation.clone()  # later in-place ops must not hit the leaf

    def __call__(self, x: Tensor, target: Target | int, upsample: bool = True) -> Tensor:
        """Grad-CAM maps of a batch.

        Args:
            x: (N, C, H, W) float images.
            target: maps the model's output to a score per image, shape (N,); an int ``c`` means ``ClassTarget(c)``.
            upsample: resize bilinearly to (H, W); ``False`` keeps the layer's (h, w).

        Returns:
            (N, H, W) non-negative maps (not normalised).
        """
        if not self.active:
            with self:
                return self(x, target, upsample)
        self._check_images(x)
        score_of = ClassTarget(target) if isinstance(target, int) else target
        previous = torch.is_grad_enabled()
        self._activation, self._running = None, True
        try:
            torch.set_grad_enabled(False)
            output = self.model(x)
            activation = self._activation
            if activation is None:
                raise FovealError("the Grad-CAM target layer did not run in the forward pass; choose a layer it uses")
            score = score_of(output)
            total = score.sum() if isinstance(score, Tensor) else None  # summed while the graph is still recorded
        finally:
            torch.set_grad_enabled(previous)
            self._activation, self._running = None, False
        if not isinstance(score, Tensor) or score.shape != (x.shape[0],):
            shape = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise FovealError(f"a Grad-CAM target must return one score per image, shape ({x.shape[0]},), got {shape}")
        if not score.requires_grad:
            raise FovealError("the target's score does not depend on the target layer; choose a layer it depends on")
        (grad,) = torch.autograd.grad(total, activation)
        with torch.no_grad():
            alpha = grad.mean((2, 3))
            maps = torch.einsum("nc,nchw->nhw", alpha, activation).clamp_min_(0)
            if upsample:
                maps = upsample_maps(maps, x.shape[-2:], self.grid)
        return maps


def _resolve(model: nn.Module, spec: str | nn.Module, argument: str) -> nn.Module:
    """A submodule of ``model`` given by dotted name or by the module itself."""
    if isinstance(spec, str):
        try:
            return model.get_submodule(spec)
        except AttributeError:
            names = ", ".join(repr(n) for n, _ in model.named_children())
            raise FovealError(
                f"{argument}={spec!r}: the model has no such submodule; give a dotted name from "
                f"model.named_modules(), e.g. one of its children: {names}"
            ) from None
    if not any(m is spec for m in model.modules()):
        raise FovealError(f"the module given as {argument} is not part of the model")
    return spec


def _auto_classifier(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Linear):
            return head
    for name in ("classifier", "fc", "head"):
        candidate = getattr(model, name, None)
        if isinstance(candidate, nn.Linear):
            return candidate
    if isinstance(model, nn.Sequential) and len(model) > 0:
        return model[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[0] if len(linears) == 1 else None


def _probe(model: nn.Module, x: Tensor, channels: int) -> tuple[nn.Module, Tensor, Tensor]:
    """Forward ``x`` and find the last module whose output is (N, channels, h, w) with h·w > 1.

    Returns:
        That module, its output, and the model's output.
    """
    seen: list[tuple[nn.Module, Tensor]] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and output.shape[1] == channels:
            seen.append((module, output))

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = [(m, out) for m, out in seen if out.shape[-2] * out.shape[-1] > 1]
    if not maps:
        raise FovealError(
            f"found no feature map of {channels} channels (the classifier's input features) larger than 1 × 1 in "
            "the model; CAM needs the map that global average pooling sees: CAM(model, feature_layer='name')"
        )
    module, features = maps[-1]
    return module, features, logits


def _class_index(classes: int | Tensor, n: int, num_classes: int, device: torch.device) -> Tensor:
    """(N,) int64 indices from an int or an (N,) tensor, range-checked."""
    if isinstance(classes, Tensor) and (classes.is_floating_point() or classes.dtype == torch.bool):
        raise FovealError(f"class indices must be integers, got dtype {classes.dtype}")
    index = torch.as_tensor(classes, dtype=torch.long, device=device)
    if index.ndim == 0:
        index = index.expand(n)
    if index.shape != (n,):
        raise FovealError(f"give one class index per image: shape ({n},), got {tuple(index.shape)}")
    _check_range(index, num_classes)
    return index


def _check_range(index: Tensor, num_classes: int) -> None:
    bad = index[(index < 0) | (index >= num_classes)]
    if bad.numel():
        raise FovealError(
            f"class index {int(bad[0])} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )


def _select(logits: Tensor, classes: Tensor | int | None, top_k: int) -> tuple[Tensor, Tensor]:
    """(N, k) class indices and their soft-max probabilities."""
    n, num_classes = logits.shape
    probs = logits.float().softmax(1)
    if classes is None:
        if not 1 <= top_k <= num_classes:
            raise FovealError(f"top_k must be between 1 and the number of classes ({num_classes}), got {top_k}")
        scores, index = probs.topk(top_k, dim=1)
        return index, scores
    if isinstance(classes, Tensor) and classes.ndim == 2:
        if classes.is_floating_point() or classes.dtype == torch.bool:
            raise FovealError(f"class indices must be integers, got dtype {classes.dtype}")
        if classes.shape[0] not in (1, n):
            raise FovealError(f"classes of shape (N, k) need {n} rows (or 1 for every image), got {classes.shape[0]}")
        index = classes.to(device=logits.device, dtype=torch.long).expand(n, -1)
        _check_range(index, num_classes)
    else:
        index = _class_index(classes, n, num_classes, logits.device)[:, None]
    return index, probs.gather(1, index)
