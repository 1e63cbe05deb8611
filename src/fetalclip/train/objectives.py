"""The training objective: open_clip's CLIP or SigLIP loss, optionally with same-view positives and an image-image term.

Three additions for small, label-derived caption sets (issue 20), each off by default so a recipe without them
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
- ``absent_view_negatives``: captions of views the data never shows as extra image-to-text columns nobody may
  pick (``train.negatives`` says why). Then the loss is computed here (``targeted_clip_loss``), not by open_clip.

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


def targeted_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, targets: torch.Tensor,
                       negative_text: torch.Tensor | None = None, world_size: int = 1) -> torch.Tensor:
    """CLIP's symmetric loss against soft ``targets`` (local rows x gathered columns), plus text-only negatives.

    ``negative_text`` (the same on every process) are extra columns of the image-to-text logits with target 0.
    """
    all_image, all_text = _gather(image, world_size, True), _gather(text, world_size, True)
    per_image = logit_scale * image @ all_text.T
    image_targets = targets
    if negative_text is not None:
        per_image = torch.cat([per_image, logit_scale * image @ negative_text.T], dim=1)
        image_targets = F.pad(targets, (0, negative_text.shape[0]))
    per_text = logit_scale * text @ all_image.T
    return (soft_cross_entropy(per_image, image_targets) + soft_cross_entropy(per_text, targets)) / 2


def same_view_targets(views: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Each local pair's targets over the gathered batch: spread evenly over the pairs of its view."""
    same = (views[:, None] == _gather(views, world_size, False)[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def own_pair_targets(local: int, rank: int, world_size: int, device: torch.device) -> torch.Tensor:
    """Plain CLIP's targets in the local-loss form: each local pair's own column among the gathered batch."""
    targets = torch.zeros(local, local * world_size, device=device)
    targets[torch.arange(local, device=device), torch.arange(local, device=device) + rank * local] = 1.0
    return targets


def view_positive_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, views: torch.Tensor,
                            rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """CLIP's symmetric loss with every same-view pair a positive (targets spread evenly over them)."""
    return targeted_clip_loss(image, text, logit_scale, same_view_targets(views, world_size).to(image.dtype),
                              world_size=world_size)


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

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, views=None, image2_features=None,
                negative_text_features=None):
        if self.view_positives or negative_text_features is not None:
            targets = (same_view_targets(views, self.world_size) if self.view_positives
                       else own_pair_targets(image_features.shape[0], self.rank, self.world_size, image_features.device))
            loss = targeted_clip_loss(image_features, text_features, logit_scale, targets.to(image_features.dtype),
                                      negative_text_features, self.world_size)
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


__all__ = ["Objective", "make_objective", "nt_xent", "own_pair_targets", "same_view_targets", "soft_cross_entropy",
           "targeted_clip_loss", "view_positive_clip_loss"]
