"""The training objective: open_clip's CLIP or SigLIP loss, optionally with same-view positives and an image-image term.

Two additions for small, label-derived caption sets (issue 20), each off by default so a recipe without them
trains exactly as before:

- ``view_positives``: the standard CLIP loss treats every other pair in the batch as a negative, but when four
  fifths of the data are heads, a batch holds many captions of one view and the loss then asks the image tower
  to tell apart captions that differ only in wording (or in numbers the image can only guess). With it, every
  pair whose caption names the same view is a positive: the soft target of an image spreads evenly over the
  captions of its view (and of a caption over the images of its view), the multi-positive form of CLIP used
  when labels are known (as in supervised contrastive learning).
- ``image_image_weight``: SimCLR/SLIP's image-image term beside the image-text one. Each image is augmented
  twice; the two embeddings must pick each other out among the batch's images (NT-Xent at temperature 0.1,
  both directions), so the image tower learns what survives a change of scanner look even where the captions
  say little. Both views go through the image tower in one forward pass (a DDP model sees one call).

Across processes the features are gathered with their gradients (as open_clip's ``gather_with_grad``) and each
process scores its own rows against all columns, open_clip's ``local_loss`` form; views are gathered without.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSL_TEMPERATURE = 0.1


def _gather(tensor: torch.Tensor, world_size: int, with_grad: bool) -> torch.Tensor:
    if world_size <= 1:
        return tensor
    import torch.distributed as dist
    import torch.distributed.nn  # noqa: F401 - the autograd-aware all_gather

    if with_grad:
        return torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)
    parts = [torch.zeros_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def view_positive_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, views: torch.Tensor,
                            rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """CLIP's symmetric loss with every same-view pair a positive (targets spread evenly over them)."""
    all_image, all_text = _gather(image, world_size, True), _gather(text, world_size, True)
    all_views = _gather(views, world_size, False)
    same = (views[:, None] == all_views[None, :]).to(image.dtype)
    targets = same / same.sum(dim=1, keepdim=True)
    per_image = logit_scale * image @ all_text.T
    per_text = logit_scale * text @ all_image.T
    return (soft_cross_entropy(per_image, targets) + soft_cross_entropy(per_text, targets)) / 2


def nt_xent(first: torch.Tensor, second: torch.Tensor, rank: int = 0, world_size: int = 1,
            temperature: float = SSL_TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss between two augmented views: each view finds its twin among the other view's batch."""
    first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    all_first, all_second = _gather(first, world_size, True), _gather(second, world_size, True)
    labels = torch.arange(first.shape[0], device=first.device) + rank * first.shape[0]
    return (F.cross_entropy(first @ all_second.T / temperature, labels)
            + F.cross_entropy(second @ all_first.T / temperature, labels)) / 2


class Objective(torch.nn.Module):
    """``loss(image_features, text_features, logit_scale, [logit_bias], views=, image2_features=)`` for one batch."""

    def __init__(self, base: torch.nn.Module, view_positives: bool = False, image_image_weight: float = 0.0,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.base, self.view_positives, self.image_image_weight = base, view_positives, float(image_image_weight)
        self.rank, self.world_size = rank, world_size

    @property
    def needs_second_image(self) -> bool:
        return self.image_image_weight > 0

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, views=None, image2_features=None):
        if self.view_positives:
            loss = view_positive_clip_loss(image_features, text_features, logit_scale, views, self.rank, self.world_size)
        elif logit_bias is not None:
            loss = self.base(image_features, text_features, logit_scale, logit_bias)
        else:
            loss = self.base(image_features, text_features, logit_scale)
        if self.image_image_weight > 0:
            loss = loss + self.image_image_weight * nt_xent(image_features, image2_features, self.rank, self.world_size)
        return loss


def make_objective(config, rank: int = 0, world_size: int = 1) -> Objective:
    """The run's objective from its recipe (``loss``, ``view_positives``, ``image_image_weight``, ``local_loss`` ...)."""
    from open_clip.loss import ClipLoss, SigLipLoss

    if config.loss == "siglip":
        base = SigLipLoss(rank=rank, world_size=world_size)
    else:
        base = ClipLoss(local_loss=config.local_loss, gather_with_grad=config.gather_with_grad, cache_labels=True,
                        rank=rank, world_size=world_size)
    return Objective(base, config.view_positives, config.image_image_weight, rank, world_size)


__all__ = ["Objective", "make_objective", "nt_xent", "soft_cross_entropy", "view_positive_clip_loss"]
