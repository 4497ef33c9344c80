"""ATST-Clip's BYOL-style teacher and student (official ``ATST`` / ``MultiCropWrapper``).

State-dict names follow the official module (``student.encoder``, ``student.projector``,
``student.predictor``, ``teacher.encoder``, ``teacher.projector``), so a Lightning module holding
this as ``model`` writes ``model.teacher.encoder.*`` like the official ``small.ckpt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.model.encoder import ATSTEncoder

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
    def __init__(self, encoder: ATSTEncoder, *, predictor: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projection_head(encoder.embed_dim)
        self.predictor = projection_head(HEAD_OUT) if predictor else nn.Identity()

    def forward(self, mels: Tensor) -> Tensor:
        return self.predictor(self.projector(self.encoder(mels)[:, 0]))  # the CLS output


def byol_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``2 - 2 cos`` averaged over the batch."""
    return 2 - 2 * (F.normalize(student, dim=-1) * F.normalize(teacher, dim=-1)).sum(dim=-1).mean()


def output_std(x: Tensor) -> Tensor:
    """Mean over dimensions of the batch std of L2-normalised outputs (collapse watch; 0 = collapsed)."""
    return F.normalize(x.float(), dim=-1).std(dim=0).mean()


class TeacherStudent(nn.Module):
    """Student (encoder, projector, predictor) trained to predict the EMA teacher across views."""

    def __init__(self, encoder: ATSTEncoder) -> None:
        super().__init__()
        teacher_encoder = ATSTEncoder(
            embed_dim=encoder.embed_dim,
            depth=encoder.depth,
            num_heads=encoder.num_heads,
            n_positions=encoder.pos_embed.shape[1],
        )
        self.student = Branch(encoder, predictor=True)
        self.teacher = Branch(teacher_encoder, predictor=False)
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)
        self.teacher.requires_grad_(False)
        # unused by ATST-Clip (a masked-prediction leftover); frozen so DDP needs no unused-parameter search
        self.student.encoder.mask_embed.requires_grad_(False)

    def forward(self, view_a: Tensor, view_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Symmetrised BYOL loss of two ``(B, 64, T)`` views, and the student/teacher output stds."""
        both = torch.cat([view_a, view_b])
        student = self.student(both)
        with torch.no_grad():
            teacher = self.teacher(both)
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
