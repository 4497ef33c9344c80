"""Log-mel front end of ATST-Clip.

Matches the official transform (torchaudio ``MelSpectrogram`` -> ``AmplitudeToDB`` on a
``(1, 64, T)`` clip -> min-max scaling) to float32 rounding, with two deliberate
differences in *how* it is computed, not in what:

* The STFT runs in blocks of frames over one reflect-padded copy of the clip, so an hour of
  audio never materialises its full complex spectrogram (1.5 GB); interior frames see the
  same samples as in one centred STFT.
* Each clip is transformed at its own length and batches are padded in the mel domain,
  as the official downstream code does; the ``top_db`` floor is therefore per clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP_LENGTH = 160
F_MIN = 60.0
F_MAX = 7800.0
N_MELS = 64
TOP_DB = 80.0
AMIN = 1e-10
# Dataset statistics used by the official code to map dB values to about [-1, 1].
DB_MIN = -79.6482
DB_MAX = 50.6842
# A centred STFT reflect-pads N_FFT // 2 samples, which needs a longer signal.
MIN_SAMPLES = N_FFT // 2 + 1
# Frames per STFT block: one minute of audio, about 130 MB of complex spectrum.
STFT_BLOCK_FRAMES = 6000


def n_frames(n_samples: int) -> int:
    """Number of mel frames the centred STFT yields for ``n_samples`` samples."""
    return n_samples // HOP_LENGTH + 1


class LogMelFrontEnd(nn.Module):
    """Waveform (16 kHz, mono) -> scaled log-mel spectrogram ``(64, T)``.

    Buffers are not persistent, so the module adds nothing to a state dict.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        fbanks = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, SAMPLE_RATE, norm=None, mel_scale="htk"
        )
        self.register_buffer("mel_fbanks", fbanks, persistent=False)  # (513, 64)

    def mel_power(self, wav: Tensor) -> Tensor:
        """Mel power spectrogram ``(64, T)`` of one 1-D clip, computed block by block."""
        padded = F.pad(wav[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
        total = n_frames(wav.shape[-1])
        blocks = []
        for start in range(0, total, STFT_BLOCK_FRAMES):
            stop = min(start + STFT_BLOCK_FRAMES, total)
            segment = padded[start * HOP_LENGTH : (stop - 1) * HOP_LENGTH + N_FFT]
            spec = torch.stft(segment, N_FFT, HOP_LENGTH, N_FFT, self.window, center=False, return_complex=True)
            power = spec.abs().pow(2.0)
            blocks.append((power.transpose(0, 1) @ self.mel_fbanks).transpose(0, 1))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)

    def forward(self, wav: Tensor) -> Tensor:
        """Scaled log-mel ``(64, T)`` of one 1-D float32 clip of at least ``MIN_SAMPLES``."""
        return self._scaled_db(self.mel_power(wav)[None])[0]

    def equal_length(self, wavs: Tensor) -> Tensor:
        """Scaled log-mels ``(B, 64, T)`` of a ``(B, n)`` batch of clips of one length (pretraining
        crops; the ``top_db`` floor stays per clip). One batched STFT on a GPU; on the CPU clip by
        clip, which keeps each spectrum in cache and measured 3x faster than one batched STFT."""
        if not wavs.is_cuda:
            return self._scaled_db(torch.stack([self.mel_power(w) for w in wavs]))
        spec = torch.stft(
            wavs, N_FFT, HOP_LENGTH, N_FFT, self.window, center=True, pad_mode="reflect", return_complex=True
        )
        return self._scaled_db(self.mel_fbanks.T @ spec.abs().pow(2.0))

    @staticmethod
    def _scaled_db(power: Tensor) -> Tensor:
        db = 10.0 * torch.log10(torch.clamp(power, min=AMIN))
        db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - TOP_DB)
        return (db - DB_MIN) / (DB_MAX - DB_MIN) * 2.0 - 1.0

    def batch(self, wavs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Mels of clips of any lengths, zero-padded to the longest: ``(B, 64, T_max)``, lengths."""
        mels = [self(w) for w in wavs]
        lengths = torch.tensor([m.shape[-1] for m in mels], device=mels[0].device)
        out = mels[0].new_zeros(len(mels), N_MELS, int(lengths.max()))
        for i, m in enumerate(mels):
            out[i, :, : m.shape[-1]] = m
        return out, lengths
