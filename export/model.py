"""The MMGen transformer: SiT (REPA flavour) with MMGen's multi-modal extensions.

One file, readable in one sitting (after facebookresearch/DiT ``models.py``). State-dict keys are exactly
the release's (``../shared/spec/mmgen-release.md``), so a release checkpoint loads with ``strict=True``.

Inference signature::

    v = model(x, t, y, task)
    # x    (N, 16, H, W)  four 4-channel latents, modality order rgb, depth, normal, mask
    # t    (N, 4)         one timestep per modality (1 = noise, 0 = data)
    # y    (N,)           class label; num_classes is the null label
    # task (N,)           0 = joint generation, k + 1 = modality k is the clean condition
    # v    (N, 16, H, W)  velocity (noise - x0) for the linear interpolant

No I/O, export or backend code lives here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmgen_edge.config import ModelConfig

LAYER_NORM_EPS = 1e-6
TIMESTEP_FREQ_DIM = 256  # width of the sinusoidal timestep features
MAX_PERIOD = 10000.0


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, T, D) scaled and shifted by (N, 1, D) rows (see :func:`modulation_chunks`)."""
    return x * (1 + scale) + shift


def modulation_chunks(modulation: torch.Tensor, count: int, width: int) -> tuple[torch.Tensor, ...]:
    """(N, count*width) -> ``count`` tensors (N, 1, width) that broadcast over the tokens.

    The same values as ``modulation.chunk(count, -1)`` then ``unsqueeze(1)``, written so that the traced graph is one
    Reshape and ``count`` constant Slices rather than chains of Shape / Div / Slice / Unsqueeze nodes: a CPU runs
    every node of the step graph at every step, at a cost of a few microseconds each.
    """
    rows = modulation.reshape(-1, count, width)
    return tuple(rows[:, i : i + 1] for i in range(count))


def timestep_features(t: torch.Tensor, dim: int = TIMESTEP_FREQ_DIM) -> torch.Tensor:
    """Sinusoidal features of each timestep, cos first: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (..., dim)


def sincos_pos_embed(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (MAE): (grid_size**2, dim), float32."""
    coords = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(coords, coords), axis=0).reshape(2, -1)  # (2, T), w varies first

    def embed_1d(half_dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / MAX_PERIOD ** (np.arange(half_dim // 2, dtype=np.float64) / (half_dim / 2.0))  # (half_dim/2,)
        out = np.outer(pos, omega)  # (T, half_dim/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (T, half_dim)

    return np.concatenate([embed_1d(dim // 2, grid[0]), embed_1d(dim // 2, grid[1])], axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, T, D) with a strided convolution."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Modality-decoupled timestep embedding: one timestep per modality -> (N, D).

    The release feeds one timestep per latent channel and averages the channel vectors within a modality;
    all channels of a modality share their timestep, so embedding the per-modality value is the same.
    """

    def __init__(self, hidden_size: int, num_modalities: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_FREQ_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size // 2)
        )
        self.mlp_fused = nn.Sequential(
            nn.Linear(hidden_size // 2 * num_modalities, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        per_modality = self.mlp(timestep_features(t))  # (N, M, D/2)
        return self.mlp_fused(per_modality.flatten(1))  # (N, D)


class LabelEmbedder(nn.Module):
    """Table lookup; used for class labels (last row = null label) and for the task index."""

    def __init__(self, num_rows: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_rows, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)  # (N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        # timm's Attention: LayerNorm(head_dim) with affine and default eps when qk_norm is on
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # scaled_dot_product_attention; False = explicit softmax (same maths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python ints (constants when traced, as the token count is fixed by the resolution) and -1 for the batch:
        # the graph's reshapes then need no Shape / Gather / Concat chains.
        tokens, dim = int(x.shape[1]), int(x.shape[2])
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (N, heads, T, T)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(-1, tokens, dim))  # (N, T, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(x, self.adaLN_modulation(c))

    def forward_modulated(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """The block given its precomputed modulation (N, 6D) (conditioning cache)."""
        width = self.norm1.normalized_shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation_chunks(modulation, 6, width)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)


class FinalLayer(nn.Module):
    """Per-modality output head: adaLN, then tokens -> p*p*C values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(x, self.adaLN_modulation(c))

    def forward_modulated(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation_chunks(modulation, 2, self.norm_final.normalized_shape[0])
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C)


def build_projector(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


class MMGen(nn.Module):
    """The MMGen denoiser. See the module docstring for the forward signature."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, config.num_modalities)
        self.y_embedder = LabelEmbedder(config.num_classes + 1, d)
        self.taskcond_embedder = LabelEmbedder(config.num_tasks, d)
        grid = config.latent_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(d, grid))[None], requires_grad=False)
        self.blocks = nn.ModuleList(
            SiTBlock(d, config.num_heads, config.mlp_ratio, config.qk_norm) for _ in range(config.depth)
        )
        # REPA projector: training only. It loads (strict) but is never part of the inference forward.
        self.projectors = nn.ModuleList()
        if config.projector_dim is not None and config.z_dim is not None:
            self.projectors.append(build_projector(d, config.projector_dim, config.z_dim))
        self.lis_final_layer = nn.ModuleList(
            FinalLayer(d, config.patch_size, config.latent_channels) for _ in range(config.num_modalities)
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, zero adaLN and output layers (the model starts at v = 0)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.taskcond_embedder.embedding_table.weight, std=0.02)
        for layer in (*self.t_embedder.mlp, *self.t_embedder.mlp_fused):
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for head in self.lis_final_layer:
            for layer in (head.adaLN_modulation[-1], head.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def set_fused_attention(self, fused: bool) -> None:
        """Choose scaled_dot_product_attention (True) or the explicit softmax form (False) in every block."""
        for block in self.blocks:
            block.attn.fused = fused

    def conditioning(self, t: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """c = t_emb + y_emb + task_emb: (N, D). Depends only on timesteps, label and task, never on x."""
        return self.t_embedder(t) + self.y_embedder(y) + self.taskcond_embedder(task)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, h*p, w*p)."""
        p, c = self.config.patch_size, self.config.latent_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(-1, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # n h w p q c -> n c h p w q
        return x.reshape(-1, c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        c = self.conditioning(t, y, task)  # (N, D)
        tokens = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        for block in self.blocks:
            tokens = block(tokens, c)  # (N, T, D)
        outputs = [self.unpatchify(head(tokens, c)) for head in self.lis_final_layer]  # M x (N, C, H, W)
        return torch.cat(outputs, dim=1)  # (N, M*C, H, W)

    def forward_with_projector(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, task: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Training forward: also returns the REPA projector outputs after block ``encoder_depth``."""
        c = self.conditioning(t, y, task)
        tokens = self.x_embedder(x) + self.pos_embed
        projected: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, c)
            if i + 1 == self.config.encoder_depth:
                projected = [projector(tokens) for projector in self.projectors]  # (N, T, z_dim) each
        outputs = [self.unpatchify(head(tokens, c)) for head in self.lis_final_layer]
        return torch.cat(outputs, dim=1), projected


def count_parameters(model: nn.Module, include_projector: bool = True) -> int:
    """Number of parameters (the fixed position embedding included, as the release counts it)."""
    return sum(
        p.numel() for name, p in model.named_parameters() if include_projector or not name.startswith("projectors.")
    )
