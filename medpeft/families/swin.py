"""timm's ``SwinTransformer``: windowed attention with relative position bias, patch merging between stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn, window_partition, window_reverse
from torch import nn

from ..errors import UserError
from .base import Family, adopt, attend, pad_extra_tokens, register, relative_position_bias


@register
class SwinFamily(Family):
    """Stages of blocks on (B, H, W, C) grids, no prefix tokens; stage s > 0 starts with a patch merging (2 × 2
    patches → one token of twice the width), which runs as part of the stage's first block. Each block attends within
    windows (every other block's windows shifted by half a window; tokens from different sides of the shift are
    masked apart) with a relative position bias. The head reads the model's own feature: the mean of the last
    stage's tokens after the final norm.
    """

    name = "swin"
    model_class = SwinTransformer
    example = "swin_tiny_patch4_window7_224"
    checkpoint_filter = staticmethod(checkpoint_filter_fn)
    spatial = True

    @classmethod
    def prepare(cls, model):
        if model.dynamic_img_size:
            raise UserError(
                "a Swin built with dynamic_img_size (shift masks made per input) is not supported: "
                "build it at the fixed img_size of its inputs"
            )

    def _stages(self) -> list[tuple[int, int, nn.Module]]:
        """(stage, index within the stage, block) in forward order."""
        return [(s, j, block) for s, stage in enumerate(self.model.layers) for j, block in enumerate(stage.blocks)]

    def blocks(self):
        return [block for _, _, block in self._stages()]

    def stage_of(self, i):
        return self._stages()[i][0]

    def block_modules(self, i):
        s, j, block = self._stages()[i]
        merging = self.model.layers[s].downsample
        return [block] if j or isinstance(merging, nn.Identity) else [merging, block]

    def dim(self, i):
        return self.blocks()[i].dim

    @property
    def num_prefix_tokens(self):
        return 0

    def grid(self, i):
        return tuple(self.blocks()[i].input_resolution)

    def final_norms(self):
        return ["norm"]

    def tensor_stage(self, name):
        parts = name.split(".")
        if parts[0] == "layers":
            s = int(parts[1])
            first = sum(len(stage.blocks) for stage in self.model.layers[:s])
            return first + (int(parts[3]) if parts[2] == "blocks" else 0)
        return self.depth if parts[0] in ("norm", "head") else 0

    def embed(self, images):
        return self.model.patch_embed(images)

    def patch_map(self, features):
        """The last stage's (B, H, W, C) grid as (B, C, H, W): the patch grid / 2^(stages - 1)."""
        return features.permute(0, 3, 1, 2)

    def run_block(self, i, x):
        for module in self.block_modules(i):
            x = module(x)
        return x

    def attention_kwargs(self, i):
        return {"mask": self.blocks()[i].attn_mask}

    def token_index(self, i):
        """(windows, window area): the stage token (row-major on the grid) at every window position, after the
        block's cyclic shift; ``H·W`` where the window covers padding."""
        block = self.blocks()[i]
        (h, w), (wh, ww), shift = self.grid(i), block.window_size, block.shift_size
        index = torch.arange(h * w).view(1, h, w, 1)
        if any(shift):
            index = torch.roll(index, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        index = F.pad(index, (0, 0, 0, -w % ww, 0, -h % wh), value=h * w)
        return window_partition(index, (wh, ww)).reshape(-1, wh * ww)

    def on_patch_grid(self, i, values):
        """A stage-s map on the patch grid: each token's value on the 2^s × 2^s patches it merges."""
        h, w = self.grid(i)
        factor = 2 ** self.stage_of(i)
        ph, pw = self.patch_grid
        grid = values.reshape(-1, h, w).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        return grid[:, :ph, :pw].reshape(values.shape[0], -1)

    @staticmethod
    def logit_bias(attn, mask=None):
        return relative_position_bias(attn)

    @staticmethod
    def logit_mask(attn, batch, mask=None):
        """The shifted-window mask (windows, N, N) of 0 / −100, as (B · windows, 1, N, N)."""
        if mask is None:
            return None
        windows, n, _ = mask.shape
        return mask.unsqueeze(0).expand(batch // windows, -1, -1, -1).reshape(batch, 1, n, n)

    def insert_tokens(self, n):
        """Blocks and merging layers on (B, n + H·W, C) sequences, as the official prompted Swin: the n tokens
        join every window (with neither a position bias nor a mask), their outputs are averaged over the windows,
        and a merging layer maps them through its norm and reduction as four copies of themselves."""
        for stage in self.model.layers:
            if not isinstance(stage.downsample, nn.Identity):
                stage.downsample = ExtraTokenMerging(stage.downsample, n, stage.input_resolution)
            stage.blocks = nn.Sequential(*[ExtraTokenSwinBlock(block, n) for block in stage.blocks])


class ExtraTokenSwinBlock(nn.Module):
    """A timm ``SwinTransformerBlock`` on (B, n + H·W, C): n extra tokens first, then the grid, row-major.

    The extra tokens are joined to every (shifted) window of their image and attend with it (zero bias and mask
    rows and columns for them); each window gives them an output and their update is the mean over the windows.
    The residuals and the MLP are the block's, on every token. The block's own modules keep their names.
    """

    def __init__(self, block: nn.Module, n: int):
        super().__init__()
        adopt(self, block)
        self.extra_tokens = n

    def forward(self, x):
        B, _, C = x.shape
        n, (H, W), (wh, ww) = self.extra_tokens, self.input_resolution, self.window_size
        shortcut = x
        x = self.norm1(x)
        extra, grid = x[:, :n], x[:, n:].reshape(B, H, W, C)
        if any(self.shift_size):
            grid = torch.roll(grid, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        grid = F.pad(grid, (0, 0, 0, -W % ww, 0, -H % wh))
        Hp, Wp = grid.shape[1:3]
        windows = window_partition(grid, (wh, ww)).reshape(-1, wh * ww, C)
        num_windows = windows.shape[0] // B
        joined = torch.cat([extra.unsqueeze(1).expand(B, num_windows, n, C).reshape(-1, n, C), windows], dim=1)
        out = self._attention(joined, num_windows)
        extra = out[:, :n].reshape(B, num_windows, n, C).mean(dim=1)
        grid = window_reverse(out[:, n:].reshape(-1, wh, ww, C), (wh, ww), Hp, Wp)[:, :H, :W]
        if any(self.shift_size):
            grid = torch.roll(grid, shifts=self.shift_size, dims=(1, 2))
        x = shortcut + self.drop_path1(torch.cat([extra, grid.reshape(B, H * W, C)], dim=1))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _attention(self, x, num_windows):
        attn, n = self.attn, self.extra_tokens
        q, k, v = SwinFamily.qkv(attn, x)
        mask = pad_extra_tokens(relative_position_bias(attn), 0, n)
        if self.attn_mask is not None:
            mask = mask + SwinFamily.logit_mask(attn, x.shape[0], pad_extra_tokens(self.attn_mask, 0, n))
        return SwinFamily.project(attn, attend(attn, q, k, v, mask.to(q.dtype)), x)


class ExtraTokenMerging(nn.Module):
    """A timm ``PatchMerging`` on (B, n + H·W, C): the grid merges as in timm, each extra token goes through the
    merging's norm and reduction as four copies of itself (the official prompted Swin's prompt upsampling)."""

    def __init__(self, merging: nn.Module, n: int, input_resolution: tuple[int, int]):
        super().__init__()
        adopt(self, merging)
        self.extra_tokens = n
        self.input_resolution = tuple(input_resolution)
        self.merge = type(merging).forward  # timm's own forward, on the adopted norm and reduction

    def forward(self, x):
        B, _, C = x.shape
        n, (H, W) = self.extra_tokens, self.input_resolution
        extra = self.reduction(self.norm(x[:, :n].repeat(1, 1, 4)))
        grid = self.merge(self, x[:, n:].reshape(B, H, W, C))
        return torch.cat([extra, grid.flatten(1, 2)], dim=1)
