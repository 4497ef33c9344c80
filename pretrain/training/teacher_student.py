"""The BYOL-style teacher and student of both ATST recipes (official ``ATST`` / ``FrameATST``,
``MultiCropWrapper``).

State-dict names follow the official modules (``student.encoder``, ``student.projector``,
``student.predictor``, ``teacher.encoder``, ``teacher.projector``), so a Lightning module
holding this as ``model`` writes ``model.teacher.encoder.*`` like the official checkpoints.

The recipes differ only in which encoder outputs feed the projector (``Recipe.outputs``, in
``pretrain.training.recipes``: Clip's CLS output, one row per clip; Frame's outputs at the masked
tokens, one row per masked token, the same token of the same clip in both views).

The loss is the same for both: ``2 - 2 cos(student_b, teacher_a)`` and its mirror, averaged over
rows and over the two pairs (the official symmetric loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.model.encoder import ATSTEncoder
from pretrain.training.recipes.base import Outputs, Recipe

HEAD_HIDDEN = 4096
HEAD_OUT = 256


def projection_head(dim_in: int) -> nn.Sequential:
    """Linear (no bias) -> BatchNorm -> ReLU -> Linear (no bias); indices 0, 1, 3 as officially."""
    return nn.Sequential(
        nn.Linear(dim_in, HEAD_HIDDEN, bias=False),
        nn.BatchNorm1d(HEAD_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(HEAD_HIDDEN, HEAD_OUT, bias=False),
    )


class Branch(nn.Module):
    def __init__(self, encoder: ATSTEncoder, outputs: Outputs, *, predictor: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.outputs = outputs
        self.projector = projection_head(encoder.embed_dim)
        self.predictor = projection_head(HEAD_OUT) if predictor else nn.Identity()

    def forward(self, mels: Tensor, token_mask: Tensor | None, masked_input: bool) -> Tensor:
        features = self.outputs(self.encoder, mels, token_mask, masked_input)
        return self.predictor(self.projector(features))


def byol_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``2 - 2 cos`` averaged over rows."""
    return 2 - 2 * (F.normalize(student, dim=-1) * F.normalize(teacher, dim=-1)).sum(dim=-1).mean()


def output_std(x: Tensor) -> Tensor:
    """Mean over dimensions of the row std of L2-normalised outputs (collapse watch; 0 = collapsed)."""
    return F.normalize(x.float(), dim=-1).std(dim=0).mean()


class TeacherStudent(nn.Module):
    """Student (encoder, projector, predictor) trained to predict the EMA teacher across views.

    ``teacher_mode``: "train" runs the teacher as the official code does (Lightning puts the whole
    module in train mode: stochastic depth in its encoder, batch statistics in its projector's
    BatchNorm); "eval" runs it deterministic, with running statistics.
    """

    def __init__(self, encoder: ATSTEncoder, recipe: Recipe, *, teacher_mode: str = "train") -> None:
        super().__init__()
        teacher_encoder = ATSTEncoder(
            family=encoder.family.name,
            embed_dim=encoder.embed_dim,
            depth=encoder.depth,
            num_heads=encoder.num_heads,
            n_positions=encoder.pos_embed.shape[1],
            drop_path=encoder.blocks[-1].drop_path_rate,
        )
        self.student = Branch(encoder, recipe.outputs, predictor=True)
        self.teacher = Branch(teacher_encoder, recipe.outputs, predictor=False)
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)
        self.teacher.requires_grad_(False)
        self.teacher_mode = teacher_mode
        if not recipe.uses_mask_embed:
            # an unused parameter: frozen so DDP needs no unused-parameter search
            self.student.encoder.mask_embed.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)
        if mode and self.teacher_mode == "eval":
            self.teacher.eval()
        return self

    def forward(
        self, view_a: Tensor, view_b: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Symmetric BYOL loss of two ``(B, 64, T)`` views, and the student/teacher output stds."""
        both = torch.cat([view_a, view_b])
        masks = None if token_mask is None else torch.cat([token_mask, token_mask])
        student = self.student(both, masks, masked_input=True)
        with torch.no_grad():
            teacher = self.teacher(both, masks, masked_input=False)
        s_a, s_b = student.chunk(2)
        t_a, t_b = teacher.chunk(2)
        loss = 0.5 * (byol_loss(s_b, t_a) + byol_loss(s_a, t_b))
        return loss, output_std(student.detach()), output_std(teacher)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` for encoder and projector."""
        for part in ("encoder", "projector"):
            t_params = list(getattr(self.teacher, part).parameters())
            s_params = list(getattr(self.student, part).parameters())
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
