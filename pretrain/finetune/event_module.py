"""Sound event detection on the encoder's 40 ms token grid, as a Lightning module: the heads and the
stages of ATST-SED (Shao et al., ICASSP 2024; Audio-WestlakeU/ATST-SED ``train/train_stage{1,2}.py``,
``desed_task/nnet/CRNN_e2e.py``).

Stages (one module each, one ``Trainer.fit`` each):

* ``head``: ATST-SED stage 1, the head on the frozen encoder's last block (per-token features
  through the final norm, precomputed: the frozen encoder runs in eval mode, so this is exact);
* ``joint``: ATST-SED stage 2, encoder and head together, the encoder at a layer-decayed lr;
* ``baseline``: the frozen baseline, every block's tokens (the package's timestamp embeddings,
  what hear-eval-kit probes) into the same head, trained as stage 1.

Heads: ``bigru``, ATST-SED's RNN part (merge ``Linear(D, 128)``, a 2-layer bidirectional GRU of
128 cells, dropout 0.5, ``Linear(256, C)``), run on packed sequences so a clip's output does not
depend on the padding of its batch; ``linear``, one ``Linear(D, C)`` per token. Loss: BCE on the
tokens of each clip. Adam, no weight decay, no clipping; the DCASE baseline's exponential warm-up,
then constant (stages 1 and baseline) or cosine to 0.1 x the peak (stage 2).

Deliberate differences from ATST-SED, which trains on DESED's four subsets: no CNN branch (the
merge layer takes the ATST features alone), no weak-label head, no mean teacher or unlabelled data,
no mixup, and no pooling to the CNN's 64 ms frames (targets and outputs stay on the 40 ms grid).
The checkpoint of each stage is selected on the validation split's onset F-measure at threshold
0.5, ties broken by the validation loss (ATST-SED: stage 1 on validation loss, stage 2 on PSDS1 +
PSDS2 of synthetic validation clips). Training clips of stage 2 are cropped at random (10 s by
default, DESED's length) so that long recordings fit in memory with gradients.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pretrain.finetune.event_metrics import Decoding, event_scores, posteriors_to_events
from pretrain.finetune.module import EMBEDDING_PARAMS
from pretrain.finetune.recipe import FinetuneConfig
from pretrain.model.checkpoint import inspect_checkpoint
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.runs.divergence import check_loss, check_weights, every_process
from pretrain.runs.schedules import exponential_warmup
from pretrain.runs.seeds import mix_seed

STAGES = ("head", "joint", "baseline")


def sed_layer_scale(name: str, depth: int, decay: float) -> float:
    """ATST-SED's stage-2 lr scale of an encoder parameter: the final norm 1, block ``i`` of ``D``
    ``decay ** (D - i)``, the embeddings ``decay ** (D + 1)`` (one group below block 0). Unlike the
    scene recipe's :func:`pretrain.finetune.module.layer_scale`, the norm is not decayed."""
    if name.startswith("blocks."):
        return decay ** (depth - int(name.split(".")[1]))
    if name.split(".")[0] in EMBEDDING_PARAMS:
        return decay ** (depth + 1)
    return 1.0


class LinearHead(nn.Module):
    """One linear layer per token (hear-eval-kit's probe without hidden layers)."""

    def __init__(self, dim: int, n_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, n_labels)

    def forward(self, x: Tensor, n_tokens: Tensor) -> Tensor:
        return self.linear(x)


class BiGRUHead(nn.Module):
    """ATST-SED's recurrent head without its CNN branch (see the module's notes)."""

    def __init__(self, dim: int, n_labels: int, *, cells: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.merge = nn.Linear(dim, cells)
        self.gru = nn.GRU(cells, cells, num_layers=layers, bidirectional=True, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * cells, n_labels)

    def forward(self, x: Tensor, n_tokens: Tensor) -> Tensor:
        packed = pack_padded_sequence(self.merge(x), n_tokens.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.gru(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=x.shape[1])
        return self.out(self.dropout(hidden))


def make_head(config: FinetuneConfig, dim: int, n_labels: int) -> nn.Module:
    if config.sed_head == "linear":
        return LinearHead(dim, n_labels)
    cells, layers = config.sed_gru_cells, config.sed_gru_layers
    return BiGRUHead(dim, n_labels, cells=cells, layers=layers, dropout=config.sed_dropout)


def token_mask(n_tokens: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=n_tokens.device)[None, :] < n_tokens[:, None]


class EventModule(pl.LightningModule):
    """A head on precomputed token features (``head``, ``baseline``), or encoder + head (``joint``)."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        checkpoint: str,
        labels: list[str],
        stage: str,
        steps_per_epoch: int,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.save_hyperparameters()
        c = self.config = FinetuneConfig(**config)
        self.stage, self.labels = stage, labels
        spec = inspect_checkpoint(checkpoint).spec
        if stage == "joint":
            extractor = self.extractor = ATSTFeatureExtractor.from_checkpoint(checkpoint)
            extractor.encoder.mask_embed.requires_grad_(False)  # Frame pretraining's alone: DDP needs every grad
            dim = spec.embed_dim
        else:
            self.extractor = None
            dim = spec.embed_dim * (spec.depth if stage == "baseline" else 1)
        self.head = make_head(c, dim, len(labels))
        epochs, warmup = (
            (c.sed_stage2_epochs, c.sed_stage2_warmup_epochs) if stage == "joint"
            else (c.sed_stage1_epochs, c.sed_stage1_warmup_epochs)
        )
        if stage == "baseline":  # the baseline trains as long as the fine-tuned run's stages together
            epochs = max(c.sed_stage1_epochs + c.sed_stage2_epochs, 1)
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = warmup * steps_per_epoch
        # validation: set by the runner before fit (file -> reference events), not saved
        self.valid_reference: dict[str, list] = {}
        self.valid_files: list[str] = []
        self._outputs: list[tuple[int, np.ndarray]] = []
        self._valid_loss: list[tuple[float, int]] = []

    # --- forward ----------------------------------------------------------------------------------
    def tokens(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The head's input ``(B, T, dim)`` and the tokens of each clip."""
        if self.extractor is None:
            return batch["features"], batch["n_tokens"]
        mels, lengths = self.extractor.mels(batch["wavs"], batch["lengths"])
        layers, n_tokens = self.extractor.layer_features_of_mels(mels, lengths, n_blocks=1)
        return layers[:, :, 0], n_tokens

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Per-token logits ``(B, T, C)`` and tokens per clip."""
        x, n_tokens = self.tokens(batch)
        return self.head(x, n_tokens), n_tokens

    def loss(self, logits: Tensor, n_tokens: Tensor, targets: Tensor) -> Tensor:
        if logits.shape != targets.shape:
            raise RuntimeError(f"targets {tuple(targets.shape)} do not fit the encoder's tokens {tuple(logits.shape)}")
        mask = token_mask(n_tokens.to(logits.device), logits.shape[1])
        return F.binary_cross_entropy_with_logits(logits[mask].float(), targets[mask])

    # --- optimiser and schedule ---------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.config
        head_lr = c.sed_stage2_lr if self.stage == "joint" else c.sed_stage1_lr
        groups: dict[float, list] = {head_lr: list(self.head.parameters())}
        if self.extractor is not None:
            depth = self.extractor.encoder.depth
            for name, p in self.extractor.encoder.named_parameters():
                if p.requires_grad:
                    peak = c.sed_encoder_lr * sed_layer_scale(name, depth, c.sed_layer_decay)
                    groups.setdefault(peak, []).append(p)
        params = [{"params": ps, "peak_lr": peak, "lr": self.lr_at(0, peak)} for peak, ps in groups.items()]
        return torch.optim.Adam(params, betas=(0.9, 0.999))

    def lr_at(self, step: int, peak: float) -> float:
        return exponential_warmup(
            step, peak=peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            cos_down=self.stage == "joint",
        )

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        # dropout and drop path draw from the global generator: seeded by (seed, step, rank), a
        # resumed run draws what the uninterrupted one did
        torch.manual_seed(mix_seed(self.config.seed, "events", self.stage, self.global_step, self.global_rank))
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = self.lr_at(self.global_step, group["peak_lr"])
        logits, n_tokens = self(batch)
        loss = self.loss(logits, n_tokens, batch["targets"])
        head_lr = self.optimizers().optimizer.param_groups[0]["lr"]
        check_loss(loss, step=self.global_step, lr=head_lr, agree=every_process(self.trainer))
        size = len(n_tokens)
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/lr", head_lr, prog_bar=True, batch_size=size)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_weights(self, step=self.global_step, agree=every_process(self.trainer))

    # --- validation ---------------------------------------------------------------------------------
    def posteriors(self, batch: dict) -> list[np.ndarray]:
        """Each clip's ``(n_tokens, C)`` probabilities."""
        logits, n_tokens = self(batch)
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        return [p[:n] for p, n in zip(probs, n_tokens.tolist(), strict=True)]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, n_tokens = self(batch)
        loss = self.loss(logits, n_tokens, batch["targets"])
        self.log("valid/loss", loss, batch_size=len(n_tokens))
        self._valid_loss.append((float(loss), len(n_tokens)))
        probs = torch.sigmoid(logits.float()).cpu()
        self._outputs.extend(
            (int(i), p[:n].numpy()) for i, p, n in zip(batch["index"].tolist(), probs, n_tokens.tolist(), strict=True)
        )

    def on_validation_epoch_end(self) -> None:
        decodings = [Decoding()] * len(self.labels)
        estimated = {self.valid_files[i]: posteriors_to_events(p, self.labels, decodings) for i, p in self._outputs}
        self._outputs.clear()
        scores = event_scores(self.valid_reference, estimated, self.labels)
        onset_f = scores["event_onset_200ms_fms"]
        self.log("valid/event_onset_200ms_fms", onset_f if np.isfinite(onset_f) else 0.0, prog_bar=True)
        self.log("valid/segment_1s_er", scores["segment_1s_er"])
        # the checkpoint is selected on it: the onset F-measure, equal ones (0 while no posterior
        # reaches 0.5) told apart by the validation loss
        loss = sum(value * n for value, n in self._valid_loss) / sum(n for _, n in self._valid_loss)
        self._valid_loss.clear()
        self.log("valid/score", (onset_f if np.isfinite(onset_f) else 0.0) - 1e-6 * loss)
