"""NAYER, noisy layer generation (Tran et al., CVPR 2024).

Instead of a random latent, each image is generated from its *class's label embedding*
e_y passed through a **noisy layer**, a linear layer re-initialized (weights N(0, 1), bias 0)
at the start of every batch:

    x_i = G(L_j(BN(e_{y_i}))),   L_j = noisy layer of the chunk of K consecutive images
    holding i (ceil(B / K) layers), y = every class floor(B / K) times + a random remainder

G (:class:`~.generator.Generator` with ``nz = le_emb_size``: Linear -> 2 upsample blocks ->
sigmoid) and the BatchNorm1d on the embeddings persist across batches; each synthesize()
call re-initializes the noisy layers, creates a fresh Adam (lr 4e-3, betas (0.5, 0.999))
over G, BN and the noisy layers, takes ``g_steps`` steps on

    bn * L_bn(momentum 0.9) + oh * CE(t(x'), y) + adv * maskedKL(s(x'), t(x'))

(x' = normalize(crop(pad 4) + flip of x); adv only once ``epoch >= warmup``; no KD step
during the warm-up either, as the reference: :meth:`NAYER.kd_warmup_epochs`), keeps the
lowest-loss step's images, and updates the BN-statistics EMA. The whole generator is
rebuilt every ``g_life`` epochs (at the first call of an epoch e with e % g_life == 0 or
(e - warmup) % g_life == 0, as the reference).

**Label embeddings.** The paper encodes "a image of {class}" with CLIP's ViT-B/32 text
encoder (512-d). There is no text encoder and no download here, so the default
``embedding = "random"`` is a documented *substitute*: fixed class embeddings drawn from
N(0, I) (``embedding_dim`` 512) once at construction with the run's seed and saved with the
run. They tell the classes apart but carry no semantic similarity between classes (CLIP's
do). ``"learnable"``: the same initial draw, as a parameter optimized with the generator.
``"file"``: a [num_classes, d] tensor from ``embedding_file`` (``.pt`` / ``.npy``), e.g.
text embeddings you computed offline with any encoder; nothing is downloaded at run time.

Defaults (public NAYER scripts, CIFAR-10): batch 400, g_steps 30 (40 for CIFAR-100),
lr_g 4e-3, bn 10, bn_momentum 0.9, oh 0.5, adv 1.33, warmup 20, g_life 10, le_emb_size 1000.
The reference makes ``g_loops`` = 2 batches per epoch (10 during warm-up): here one batch per
synthesize() call, so set ``distill.synth_batches = 2`` (the warm-up's extra batches are not
reproduced); KD: batch 512, lr 0.2, T = 20, 220 epochs (or 120). The adversarial term uses
the real, distinct student (the reference passes its student too).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import total_loss
from ..losses import BNStatLoss, bn_layers, inversion_terms, masked_kl_adversarial
from ..spec import random_crop_flip
from .base import BestStep, SynthesisResult, SynthesisSetup, Synthesizer
from .generator import Generator, check_generator_size
from .generative import check_betas

EmbeddingSource = Literal["random", "learnable", "file"]


def load_embeddings(path: str, num_classes: int) -> Tensor:
    """A [num_classes, d] float tensor from a .pt (tensor) or .npy file; ConfigError otherwise."""
    try:
        if path.endswith(".npy"):
            import numpy as np

            emb = torch.from_numpy(np.load(path))
        else:
            emb = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(missing_embeddings(path, f"[{num_classes}, d]")) from exc
    except Exception as exc:  # unreadable / not a tensor file
        raise ConfigError(f"nayer.embedding_file = {path!r} could not be read as a tensor "
                          f"({type(exc).__name__}: {exc}); save a [{num_classes}, d] tensor with "
                          "torch.save or numpy.save.") from exc
    if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] != num_classes:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ConfigError(f"nayer.embedding_file = {path!r} holds {shape}; expected a "
                          f"[{num_classes}, d] tensor, one row per class in label order.")
    emb = emb.float()
    if not torch.isfinite(emb).all():
        raise ConfigError(f"nayer.embedding_file = {path!r} holds NaN or infinite values; "
                          "recompute the class embeddings.")
    return emb


def missing_embeddings(path: str, shape: str) -> str:
    return (f"nayer.embedding_file = {path!r} does not exist; give a .pt or .npy file holding a "
            f"{shape} tensor of class embeddings (e.g. text-encoder features computed offline).")


class NoisyLayerGenerator(nn.Module):
    """Label embeddings -> BN1d -> per-chunk noisy linear layers -> :class:`Generator`."""

    def __init__(self, embeddings: Tensor, learnable: bool, le_emb_size: int, ngf: int,
                 image_size: int, channels: int, batch_size: int) -> None:
        super().__init__()
        k, d = embeddings.shape
        if learnable:
            self.embeddings = nn.Parameter(embeddings.clone())
        else:
            self.register_buffer("embeddings", embeddings.clone())
        self.num_classes = k
        self.norm = nn.BatchNorm1d(d)
        self.noisy = nn.ModuleList(nn.Linear(d, le_emb_size) for _ in range(math.ceil(batch_size / k)))
        self.body = Generator(le_emb_size, ngf, image_size, channels)

    @torch.no_grad()
    def reset_noisy_layers(self) -> None:
        for layer in self.noisy:
            nn.init.normal_(layer.weight, 0.0, 1.0)
            nn.init.zeros_(layer.bias)

    def forward(self, targets: Tensor) -> Tensor:
        e = self.norm(self.embeddings[targets])
        k = self.num_classes
        v = torch.cat([self.noisy[j](chunk) for j, chunk in enumerate(e.split(k))])
        return self.body(v)


class NAYER(Synthesizer):
    """NAYER (Tran et al. 2024): class embeddings (seeded random substitute for CLIP's text features, or nayer.embedding_file) through re-initialized noisy layers into a persistent generator."""

    name = "nayer"

    @dataclass
    class Config:
        batch_size: int = 400
        g_steps: int = 30  # CIFAR-10 scripts; CIFAR-100: 40
        lr_g: float = 4e-3
        betas: tuple[float, float] = (0.5, 0.999)
        ngf: int = 64
        le_emb_size: int = 1000
        embedding: EmbeddingSource = "random"  # substitute for CLIP text embeddings (see doc)
        embedding_dim: int = 512  # "random" / "learnable" (CLIP ViT-B/32: 512)
        embedding_file: str = ""
        bn: float = 10.0
        bn_momentum: float = 0.9
        oh: float = 0.5
        adv: float = 1.33
        warmup: int = 20  # epochs without the adversarial term
        g_life: int = 10  # epochs between generator re-initializations (0 = never)

        def validate(self) -> None:
            s = "nayer"
            for k in ("batch_size", "g_steps", "ngf", "le_emb_size", "embedding_dim"):
                cfgmod.require(getattr(self, k) >= 1, f"{s}.{k} = {getattr(self, k)} must be >= 1.")
            cfgmod.positive(s, lr_g=self.lr_g)
            cfgmod.nonneg(s, bn=self.bn, oh=self.oh, adv=self.adv, warmup=self.warmup,
                          g_life=self.g_life, bn_momentum=self.bn_momentum)
            cfgmod.require(self.bn_momentum < 1, f"{s}.bn_momentum = {self.bn_momentum} must be < 1.")
            check_betas(s, self.betas)
            cfgmod.require((self.embedding == "file") == bool(self.embedding_file),
                           f"{s}: embedding = 'file' needs embedding_file (a .pt / .npy [classes, d] "
                           f"tensor), and embedding_file needs embedding = 'file' "
                           f"(got embedding = {self.embedding!r}, embedding_file = {self.embedding_file!r}).")
            # before any compute (teacher training): the shape is checked once the classes are known
            cfgmod.require(not self.embedding_file or os.path.isfile(self.embedding_file),
                           missing_embeddings(self.embedding_file, "[classes, d]"))

    def check_setup(self, setup: SynthesisSetup) -> None:
        cfg = self.cfg
        check_generator_size(setup.spec.image_size, "nayer")
        if cfg.batch_size < 2:
            raise ConfigError("nayer.batch_size must be >= 2: the generator's BatchNorm needs 2 images per batch.")
        if cfg.bn > 0 and not bn_layers(setup.teacher):
            raise ConfigError("nayer: the teacher has no BatchNorm2d layer, so the BN statistics loss "
                              "is undefined; set nayer.bn = 0 or use a teacher with BN.")
        if cfg.bn + cfg.oh + cfg.adv == 0 and not len(setup.regularizers):
            raise ConfigError("nayer: every loss weight is 0 (nayer.bn, nayer.oh, nayer.adv); enable at least one term.")

    def __init__(self, setup: SynthesisSetup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        cfg, k = self.cfg, self.spec.num_classes
        if cfg.embedding == "file":
            self.embeddings = load_embeddings(cfg.embedding_file, k)
        else:
            self.embeddings = torch.randn(k, cfg.embedding_dim)
        self.generator = self._build_generator()
        self.bn_loss = BNStatLoss(self.teacher, momentum=cfg.bn_momentum)
        self._built_epoch: int | None = None  # epoch of the last g_life re-initialization check
        self._leaves: list[Tensor] = []

    def _build_generator(self) -> NoisyLayerGenerator:
        cfg, spec = self.cfg, self.spec
        return NoisyLayerGenerator(self.embeddings, cfg.embedding == "learnable", cfg.le_emb_size,
                                   cfg.ngf, spec.image_size, spec.channels, cfg.batch_size).to(self.device).train()

    def optimized_tensors(self) -> list[Tensor]:
        """The leaves the current call optimizes (generator, embedding BN, noisy layers)."""
        return list(self._leaves)

    def adversarial_on(self) -> bool:
        return self.cfg.adv > 0 and self.epoch >= self.cfg.warmup

    def kd_warmup_epochs(self) -> int:
        """The reference trains the student only once ``epoch >= warmup`` (and steps its
        schedule only then), so the warm-up epochs synthesize only (unless
        ``distill.warmup`` is set)."""
        return int(self.cfg.warmup)

    def balanced_targets(self) -> Tensor:
        """Every class floor(B / K) times (in order), then B mod K random labels."""
        b, k = self.cfg.batch_size, self.spec.num_classes
        rest = torch.randint(0, k, (b % k,))
        return torch.cat([torch.arange(k).repeat(b // k), rest]).to(self.device)

    def _maybe_rebuild(self) -> None:
        life, e = self.cfg.g_life, self.epoch
        if life <= 0 or self._built_epoch == e:
            return
        if e > 0 and (e % life == 0 or (e - self.cfg.warmup) % life == 0):
            self.generator = self._build_generator()
        self._built_epoch = e

    def synthesize(self) -> SynthesisResult:
        cfg, spec = self.cfg, self.spec
        t0 = time.perf_counter()
        self._maybe_rebuild()
        gen = self.generator.train()
        gen.reset_noisy_layers()
        targets = self.balanced_targets()
        self._leaves = list(gen.parameters())
        opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
        adv_on = self.adversarial_on()
        need_student = self.need_student(adv_on)
        best = BestStep()
        try:
            with self.frozen_models(), self.bn_loss as bnl:
                for it in range(cfg.g_steps):
                    x = gen(targets)
                    xa = spec.normalize(random_crop_flip(x, spec.crop_padding, spec.hflip))
                    t_out, s_out = self.forward_pair(xa, need_student)
                    terms = inversion_terms(cfg.bn, cfg.oh, cfg.adv if adv_on else 0.0, bnl, t_out,
                                            s_out, targets, masked_kl_adversarial)
                    terms.update(self.step_terms(xa, targets, t_out, s_out, it))
                    terms = self.balance(terms, x, it)
                    loss = total_loss(terms, where="nayer synthesis", step=self.step)
                    best.offer(loss, x, terms)
                    opt.zero_grad(set_to_none=True)
                    self.backward(loss)
                    opt.step()
                    self.step += 1
        finally:
            self._leaves = []
        self.bn_loss.update_ema()
        return self.finish(best.images, targets, t0, best.terms)

    # -- persistence -------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "embeddings": self.embeddings.clone(),
                "bn_loss": self.bn_loss.state_dict(), "built_epoch": self._built_epoch}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.embeddings = state["embeddings"].clone()
        self.generator = self._build_generator()
        self.generator.load_state_dict(state["generator"])
        self.bn_loss.load_state_dict(state.get("bn_loss", {}))
        self._built_epoch = state.get("built_epoch")
