"""What each objective of the SG2V model trains, reads, computes and samples with: diffusion, layout, distill.

`sg2v.training.train.ModelObjective` hands these to the harness; pretraining's objective is
`sg2v.training.pretrain.PretrainObjective`.
"""

from __future__ import annotations

from typing import Any

import torch

from sg2v.graph import GRAPH_TENSORS
from sg2v.training.data import ShapesLayoutDataset, ShapesVideoDataset
from sg2v.training.losses import consistency_distill_loss, diffusion_loss, layout_loss
from sg2v.video import frames_to_unit


def _unit_video(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """batch["video"] in [-1, 1]: uint8 as the data loader ships it is mapped, float32 is already there."""
    video = batch["video"]
    return frames_to_unit(video) if video.dtype == torch.uint8 else video


def _graph(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in GRAPH_TENSORS}


def _boxes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The clips' true boxes when the model is grounded on a layout, else None."""
    return batch["boxes"] if getattr(model, "module", model).grounded else None


class Diffusion:
    """The UNet's v-prediction loss with CFG condition dropout, on rendered clips and their true boxes."""

    name = "diffusion"
    arrays = "diffusion"  # what a converted sample holds for it: frames, graph, boxes
    shapes_dataset = ShapesVideoDataset
    samples_video = True  # evaluation samples videos (else: layouts)

    def trains(self, name: str, freeze_encoder: bool) -> bool:
        """Whether the parameter `name` learns: all but the layout network (the encoder unless frozen)."""
        if name.startswith("encoder."):
            return not freeze_encoder
        return not name.startswith("layout_net.")

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
             tc: Any, teacher: torch.nn.Module | None) -> torch.Tensor:
        return diffusion_loss(model, _unit_video(batch), _graph(batch), generator, boxes=_boxes(model, batch))

    def sampling(self, tc: Any, cfg: Any) -> tuple[str, int]:
        """The sampler and steps evaluation samples with."""
        return tc.eval_sampler, tc.eval_steps

    def true_layouts(self, model: torch.nn.Module) -> bool:
        """Whether evaluation draws on the true tracks (the UNet's part of a grounded model)."""
        return bool(model.grounded)


class Layout(Diffusion):
    """The layout network's loss on unrendered scenes, half the objects' tracks given in `--pin-prob` of
    the samples."""

    name = "layout"
    arrays = "layout"  # graph and tracks, no frames
    shapes_dataset = ShapesLayoutDataset
    samples_video = False

    def trains(self, name: str, freeze_encoder: bool) -> bool:
        if name.startswith("encoder."):
            return not freeze_encoder
        return name.startswith("layout_net.")

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
             tc: Any, teacher: torch.nn.Module | None) -> torch.Tensor:
        return layout_loss(model, batch["tracks"], batch["track_mask"], _graph(batch), generator,
                           pin_prob=tc.pin_prob, train_encoder=not tc.freeze_encoder,
                           track_weight=batch.get("track_weight"))


class Distill(Diffusion):
    """The guidance-distilled student's consistency loss against its frozen teacher (the UNet only: the
    student shares its teacher's encoder and layout network)."""

    name = "distill"

    def trains(self, name: str, freeze_encoder: bool) -> bool:
        return name.startswith("unet.")

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
             tc: Any, teacher: torch.nn.Module | None) -> torch.Tensor:
        d = getattr(model, "module", model).cfg.distill
        return consistency_distill_loss(model, teacher, _unit_video(batch), _graph(batch), generator,
                                        boxes=_boxes(model, batch),
                                        guidance_range=(d.guidance_min, d.guidance_max),
                                        rescale=d.guidance_rescale, grid_steps=d.grid_steps)

    def sampling(self, tc: Any, cfg: Any) -> tuple[str, int]:
        return "ddim", cfg.diffusion.default_steps  # a student samples with DDIM on its grid

    def true_layouts(self, model: torch.nn.Module) -> bool:
        return False


KINDS: dict[str, Diffusion] = {k.name: k for k in (Diffusion(), Layout(), Distill())}
