"""Online probe: does pretraining make the teacher's embeddings better? Measured during the run.

Every ``probe_every`` optimizer steps (and at step 0, the random-initialisation line) the
teacher encoder embeds the clips of one or more HEAR scene tasks (the official scene feature of
its family over all blocks, what ``atst_hear`` gives hear-eval-kit by default), and two
classifiers are fitted on the train and valid splits and scored on test, in seconds:

* k-NN: cosine similarity on centred embeddings, ``KNN_K`` neighbours, similarity-weighted votes;
* linear: multinomial logistic regression on standardised embeddings, full-batch L-BFGS.

Beside them, two label-free measures of collapse on all probe clips, which the projector-output
std logged by training does not see (it stays up while the encoder's embeddings lose dimensions):

* ``effective_rank``: RankMe, ``exp`` of the entropy of the normalised singular values of the
  centred embedding matrix (1 = every clip on one line; at most ``min(clips, width)``);
* ``dim_std``: mean per-dimension std of the L2-normalised embeddings.

A weight-free baseline is scored once per task with the same classifiers: each clip's log-mel
mean and std over time (128 numbers). Results go to the run's loggers (``probe/<task>/knn`` ...)
and to ``probe.jsonl``; ``plot_run`` draws them. Under DDP rank 0 probes, the other ranks wait
at the next gradient all-reduce; a resumed run continues the same file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.model.encoder import ATSTEncoder
from pretrain.model.extractor import ATSTFeatureExtractor
from pretrain.model.frontend import LogMelFrontEnd
from pretrain.model.hear_task import HearTask, TaskError
from pretrain.runs.plot import save_figure

log = logging.getLogger(__name__)

KNN_K = 5
KNN_TEMPERATURE = 0.07  # votes weighted by exp(similarity / T), as in DINO's k-NN evaluation
LINEAR_L2 = 1e-3
LINEAR_ITERATIONS = 100
EMBED_BATCH = 64
PROBE_FILE = "probe.jsonl"


@dataclass
class ProbeTask:
    """One task's clips as mels, ready to embed: fit = train + valid, scored on test."""

    name: str
    fit: tuple[Tensor, Tensor, Tensor]  # mels (N, 64, T), frames per clip, label index
    test: tuple[Tensor, Tensor, Tensor]
    n_labels: int
    baseline: dict[str, float]

    @classmethod
    def load(cls, root: str | Path, frontend: LogMelFrontEnd) -> ProbeTask:
        task = HearTask.open(root)
        if task.multilabel or task.folds:
            raise TaskError(f"{task.name}: the probe takes multiclass trainvaltest scene tasks")
        parts = [task.read_split(split) for split in ("train", "valid", "test")]

        def mels(splits) -> tuple[Tensor, Tensor, Tensor]:
            wavs = [w for s in splits for w in s.wavs]
            padded, lengths = frontend.batch(wavs)
            return padded, lengths, torch.cat([s.targets for s in splits]).argmax(dim=1)

        fit, test = mels(parts[:2]), mels(parts[2:])
        baseline = score(mel_statistics(*fit[:2]), fit[2], mel_statistics(*test[:2]), test[2], len(task.labels))
        return cls(task.name, fit, test, len(task.labels), baseline)


def mel_statistics(mels: Tensor, lengths: Tensor) -> Tensor:
    """The weight-free baseline feature: per-band mean and std of each clip's log-mel over time."""
    valid = (torch.arange(mels.shape[-1])[None, :] < lengths[:, None]).to(mels.dtype)[:, None, :]
    n = valid.sum(-1)
    mean = (mels * valid).sum(-1) / n
    std = (((mels - mean[..., None]) ** 2 * valid).sum(-1) / n).sqrt()
    return torch.cat([mean, std], dim=1)


def knn_accuracy(fit: Tensor, fit_labels: Tensor, test: Tensor, test_labels: Tensor, n_labels: int) -> float:
    centre = fit.mean(0)
    fit_n, test_n = F.normalize(fit - centre, dim=1), F.normalize(test - centre, dim=1)
    similarity, index = (test_n @ fit_n.T).topk(min(KNN_K, len(fit)), dim=1)
    votes = torch.zeros(len(test), n_labels).scatter_add_(1, fit_labels[index], (similarity / KNN_TEMPERATURE).exp())
    return (votes.argmax(1) == test_labels).float().mean().item()


def linear_accuracy(fit: Tensor, fit_labels: Tensor, test: Tensor, test_labels: Tensor, n_labels: int) -> float:
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    x, x_test = (fit - mean) / std, (test - mean) / std
    weight = torch.zeros(x.shape[1], n_labels, requires_grad=True)
    bias = torch.zeros(n_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=LINEAR_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, fit_labels) + LINEAR_L2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return ((x_test @ weight + bias).argmax(1) == test_labels).float().mean().item()


def score(fit: Tensor, fit_labels: Tensor, test: Tensor, test_labels: Tensor, n_labels: int) -> dict[str, float]:
    fit, test = fit.float(), test.float()
    return {
        "knn": knn_accuracy(fit, fit_labels, test, test_labels, n_labels),
        "linear": linear_accuracy(fit, fit_labels, test, test_labels, n_labels),
    }


def effective_rank(embeddings: Tensor) -> float:
    """RankMe of the centred embeddings (module docstring)."""
    singular = torch.linalg.svdvals((embeddings - embeddings.mean(0)).double())
    p = singular / singular.sum() + 1e-12
    return float(torch.exp(-(p * p.log()).sum()))


def dim_std(embeddings: Tensor) -> float:
    return F.normalize(embeddings.float(), dim=1).std(0).mean().item()


@torch.no_grad()
def embed(extractor: ATSTFeatureExtractor, mels: Tensor, lengths: Tensor) -> Tensor:
    """All-block scene embeddings, ``EMBED_BATCH`` clips at a time, with the encoder in eval mode."""
    was_training = extractor.encoder.training
    extractor.encoder.eval()
    device = extractor.device
    try:
        out = [
            extractor.scene_embeddings_of_mels(
                mels[i : i + EMBED_BATCH].to(device), lengths[i : i + EMBED_BATCH].to(device), n_blocks=extractor.depth
            ).cpu()
            for i in range(0, len(mels), EMBED_BATCH)
        ]
    finally:
        extractor.encoder.train(was_training)
    return torch.cat(out)


def probe_encoder(encoder: ATSTEncoder, tasks: list[ProbeTask], chunk_seconds: float) -> dict[str, float]:
    """Every task's k-NN and linear accuracy and the collapse measures: ``{"<task>/knn": ...}``."""
    extractor = ATSTFeatureExtractor(encoder, crop_seconds=chunk_seconds)  # the live encoder, not a copy
    results: dict[str, float] = {}
    every = []
    for task in tasks:
        fit, test = embed(extractor, *task.fit[:2]), embed(extractor, *task.test[:2])
        for name, value in score(fit, task.fit[2], test, task.test[2], task.n_labels).items():
            results[f"{task.name}/{name}"] = value
        every += [fit, test]
    embeddings = torch.cat(every)
    results["effective_rank"] = effective_rank(embeddings)
    results["dim_std"] = dim_std(embeddings)
    results["mean_knn"] = sum(results[f"{t.name}/knn"] for t in tasks) / len(tasks)
    return results


class OnlineProbe(pl.Callback):
    """Probe the teacher at step 0, every ``every`` optimizer steps and at the end (module docstring)."""

    def __init__(self, task_dirs: list[str], *, every: int, chunk_seconds: float, run_dir: str | Path) -> None:
        self.task_dirs = task_dirs
        self.every = every
        self.chunk_seconds = chunk_seconds
        self.path = Path(run_dir) / PROBE_FILE
        self.tasks: list[ProbeTask] = []
        self.last_step = -1
        self.seconds = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not self.tasks:
            start = time.perf_counter()
            frontend = LogMelFrontEnd()
            self.tasks = [ProbeTask.load(d, frontend) for d in self.task_dirs]
            for task in self.tasks:
                log.info("probe task %s: log-mel baseline %s", task.name, task.baseline)
            self.seconds += time.perf_counter() - start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # step 0, and a resume whose step the run it continues did not get to probe
        if trainer.global_step not in {r["step"] for r in read_probe(self.path.parent)}:
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probe(trainer, pl_module)

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self.last_step:
            return
        self.last_step = step
        start = time.perf_counter()
        results = probe_encoder(pl_module.model.teacher.encoder, self.tasks, self.chunk_seconds)
        for task in self.tasks:
            results.update({f"{task.name}/{k}_logmel": v for k, v in task.baseline.items()})
        self.seconds += time.perf_counter() - start
        results["seconds"] = self.seconds
        for logger in trainer.loggers:
            logger.log_metrics({f"probe/{k}": v for k, v in results.items()}, step=step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **results}) + "\n")
        log.info("probe at step %d: mean k-NN %.3f, rank %.2f", step, results["mean_knn"], results["effective_rank"])


def read_probe(run_dir: str | Path) -> list[dict]:
    """The probe records of a run, one per probed step (a resumed run's later record wins)."""
    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return []
    records = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a run killed while writing it
            continue
        records[record["step"]] = record
    return [records[s] for s in sorted(records)]


def plot_probe(run_dir: str | Path, out: str | Path | None = None, *, title: str = "online probe") -> Path | None:
    """``probe.png``: k-NN and linear accuracy per task (solid) beside the log-mel baseline (dashed),
    and the collapse measures, against the optimizer step. ``None`` when the run has no probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_probe(run_dir)
    if not records:
        return None
    steps = [r["step"] for r in records]
    tasks = sorted({k.split("/")[0] for k in records[0] if k.endswith("/knn")})
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True)
    for ax, kind in zip(axes[:2], ("knn", "linear"), strict=True):
        for i, task in enumerate(tasks):
            color = f"C{i}"
            ax.plot(steps, [r[f"{task}/{kind}"] for r in records], color=color, lw=1.4, label=task)
            ax.axhline(records[0][f"{task}/{kind}_logmel"], color=color, ls="--", lw=1)
        ax.set_ylabel(f"{kind} accuracy")
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="lower left", title="dashed: log-mel baseline", title_fontsize=8)
    axes[2].plot(steps, [r["effective_rank"] for r in records], color="k")
    axes[2].set_ylabel("effective rank")
    axes[3].plot(steps, [r["dim_std"] for r in records], color="k")
    axes[3].set_ylabel("per-dim std")
    axes[3].set_xlabel("optimizer step (step 0: random initialisation)")
    for ax in axes:
        ax.grid(alpha=0.3)
    return save_figure(fig, f"{title}: {Path(run_dir).name}", Path(out) if out else Path(run_dir) / "probe.png")
