"""Observation encoders: low-dimensional MLP and an image trunk (ResNet-18 or a small CNN; GroupNorm,
spatial softmax) per camera.

Inputs are already normalised: state (B, To, Ds); images (B, To, C, H, W) floats in [0, 1]; a multi-task
policy's task indices (B, To) or (B,) (long, rows of ``PolicyConfig.tasks``).
Output is per-step features (B, To, F); the U-Net flattens them, the transformer uses them as tokens, so a
learned task embedding concatenated to every step conditions both denoisers.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from streamdp.policy.config import PolicyConfig

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
TASK_KEY = "task"  # an observation's instruction string (LeRobot frames carry it under this key)
TASK_INDEX_KEY = "task_index"  # its row in PolicyConfig.tasks: what the encoder reads (LeRobot's column name)


class SpatialSoftmax(nn.Module):
    """Expected 2-D image coordinates of K learned keypoint maps (Levine et al.); output (B, 2K)."""

    def __init__(self, channels: int, num_kp: int) -> None:
        super().__init__()
        self.kp = nn.Conv2d(channels, num_kp, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        logits = self.kp(feat).flatten(2)  # (B, K, HW)
        attn = logits.softmax(-1)
        ys = torch.linspace(-1, 1, h, device=feat.device)
        xs = torch.linspace(-1, 1, w, device=feat.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attn * gx.reshape(1, 1, -1)).sum(-1)
        ey = (attn * gy.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=-1).reshape(b, -1)


def _group_norm(channels: int) -> nn.GroupNorm:
    # BatchNorm misbehaves with EMA weights and batch-1 inference; GroupNorm as in Diffusion Policy.
    return nn.GroupNorm(max(1, channels // 16), channels)


def _small_trunk(in_channels: int) -> tuple[nn.Module, int]:
    """Four 3x3 convolutions, stride 2 each (96 px -> 6 px), GroupNorm and Mish: a CPU-trainable trunk."""
    layers: list[nn.Module] = []
    c = in_channels
    for width in (32, 32, 64, 64):
        layers += [nn.Conv2d(c, width, 3, 2, 1), _group_norm(width), nn.Mish()]
        c = width
    return nn.Sequential(*layers), c


class ImageEncoder(nn.Module):
    """Image trunk (ResNet-18 by default, random init: no weight download; or the small CNN), GroupNorm,
    spatial-softmax keypoints."""

    def __init__(self, in_channels: int, feature_dim: int, backbone: str = "resnet18") -> None:
        super().__init__()
        if backbone == "small":
            self.trunk, channels = _small_trunk(in_channels)
        else:
            net = torchvision.models.resnet18(weights=None, norm_layer=_group_norm)
            if in_channels != 3:
                net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.trunk, channels = nn.Sequential(*list(net.children())[:-2]), 512  # drop avgpool + fc
        self.pool = SpatialSoftmax(channels, feature_dim // 2)
        self.out = nn.Linear(feature_dim, feature_dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.trunk(img * 2.0 - 1.0)))


def crop(img: torch.Tensor, ratio: float, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (training) or centre crop (inference) of (N, C, H, W) to ratio of each side."""
    if ratio >= 1.0:
        return img
    n, _, h, w = img.shape
    ch, cw = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
    if not train:
        top, left = (h - ch) // 2, (w - cw) // 2
        return img[:, :, top : top + ch, left : left + cw]
    tops = torch.randint(0, h - ch + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - cw + 1, (n,), generator=generator)
    rows = (tops[:, None] + torch.arange(ch)).to(img.device)
    cols = (lefts[:, None] + torch.arange(cw)).to(img.device)
    idx = torch.arange(n, device=img.device)[:, None, None]
    return img.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ObservationEncoder(nn.Module):
    """State MLP and one image encoder per camera (or one shared), concatenated per step."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        e = cfg.encoder
        self.state_mlp = (
            nn.Sequential(
                nn.Linear(cfg.state_dim, e.state_hidden), nn.Mish(), nn.Linear(e.state_hidden, e.state_hidden)
            )
            if cfg.state_dim > 0
            else None
        )
        self.cameras = list(cfg.camera_names)
        if self.cameras:
            c = cfg.image_shape[0]
            if e.share_camera_backbone:
                shared = ImageEncoder(c, e.image_feature_dim, e.backbone)
                self.image_encoders = nn.ModuleDict({cam: shared for cam in self.cameras})
            else:
                self.image_encoders = nn.ModuleDict(
                    {cam: ImageEncoder(c, e.image_feature_dim, e.backbone) for cam in self.cameras})
        self.out_dim = (e.state_hidden if self.state_mlp is not None else 0) + len(self.cameras) * e.image_feature_dim
        # No module at all without tasks: single-task checkpoints keep their exact weights and outputs.
        self.task_embed = nn.Embedding(len(cfg.tasks), e.task_embed_dim) if cfg.tasks else None
        if self.task_embed is not None:
            self.out_dim += e.task_embed_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        if self.state_mlp is not None:
            feats.append(self.state_mlp(obs[STATE_KEY]))
        for cam in self.cameras:
            img = obs[IMAGE_PREFIX + cam]
            b, t = img.shape[:2]
            flat = crop(img.flatten(0, 1), self.cfg.encoder.crop_ratio, self.training)
            feats.append(self.image_encoders[cam](flat).reshape(b, t, -1))
        if self.task_embed is not None:
            idx = obs[TASK_INDEX_KEY].long()
            if idx.dim() == 1:  # one task per sample: the same for every step
                idx = idx[:, None].expand(-1, feats[0].shape[1] if feats else self.cfg.n_obs_steps)
            feats.append(self.task_embed(idx))
        return torch.cat(feats, dim=-1)
