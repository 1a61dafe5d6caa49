"""ASID: Attention-Sharing Information Distillation Transformer for lightweight SISR.

Park, Soh, Cho, "Efficient Attention-Sharing Information Distillation Transformer for
Lightweight Single Image Super-Resolution", AAAI 2025.

The module tree reproduces the authors' release exactly, so their checkpoints load with
``strict=True`` and give the same numbers. ``shared/design/asid-architecture.md`` is the
specification this file follows; module and attribute names are those of the released
state_dict (``LB1.net.fn.0``, ``SLA1.attn.to_qkv``, ``esa.conv1``, ``up.0``, ...).

This eager implementation is the reference definition of the math: windows and channel-attention
groups are formed with ``einops.rearrange`` patterns that spell the paper's layouts (each a view,
one permutation and a reshape; no Python loops over windows), attention is a batched matmul,
softmax runs in float32.

Overview (c = ``num_feat``, s = c / 4)::

    x -> input conv -> block0 (computes 6 attention maps) -> block1 .. block{n-1} (reuse them)
      -> output conv (+ shallow features) -> conv + PixelShuffle -> crop

Each group is an :class:`InformationDistillationBlock` followed by a 1x1 conv, a residual
connection and :class:`EnhancedSpatialAttention`.
"""
import math
import numbers

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from einops import rearrange
from torch import nn

#: Number of channels inside :class:`EnhancedSpatialAttention` (fixed in the release).
ESA_CHANNELS = 16
#: Smallest input side the ESA branch accepts: 3x3 stride-2 conv (no padding), then a
#: 7x7 max-pool with stride 3 needs at least 7 px, i.e. (15 - 3) // 2 + 1 = 7.
ESA_MIN_SIZE = 15


# ----------------------------------------------------------------------------------------
# window helpers
# ----------------------------------------------------------------------------------------
def window_partition(x, window_size, grid=False):
    """Split an NCHW map into windows of ``window_size**2`` tokens (channels last).

    Args:
        x (Tensor): (B, C, H, W), H and W multiples of ``window_size``.
        window_size (int): Window side w.
        grid (bool): False: window (i, j) is the w x w block at rows w*i .. w*i + w-1 and
            cols w*j .. w*j + w-1 (local windows, SLA). True: with gh = H / w, gw = W / w,
            window (i, j) holds the pixels at rows i + gh*u, cols j + gw*v for u, v in
            0 .. w-1 (dilated grid windows spread over the image, SGA).
            Token order inside a window is row-major over (u, v).

    Returns:
        Tensor: (B * gh * gw, w * w, C), windows ordered (b, i, j).
    """
    if grid:  # window (i, j) holds rows i + gh*u, cols j + gw*v
        return rearrange(x, 'b c (u i) (v j) -> (b i j) (u v) c', u=window_size, v=window_size)
    return rearrange(x, 'b c (i u) (j v) -> (b i j) (u v) c', u=window_size, v=window_size)


def add_windows(x, windows, window_size, grid=False):
    """Return ``x + window_reverse(windows)`` without materialising the reversed windows.

    Args:
        x (Tensor): (B, C, H, W).
        windows (Tensor): (B * gh * gw, w * w, C) as produced by :func:`window_partition`
            with the same ``window_size`` and ``grid``.
        window_size (int): Window side w.
        grid (bool): Window layout, see :func:`window_partition`.

    Returns:
        Tensor: (B, C, H, W), contiguous.
    """
    b, c, h, w = x.shape
    sizes = dict(b=b, i=h // window_size, j=w // window_size, u=window_size, v=window_size)
    # the sum is taken on 6-d views of x and of the windows, so the reversed windows are never copied
    if grid:
        out = (rearrange(x, 'b c (u i) (v j) -> b c u i v j', **sizes)
               + rearrange(windows, '(b i j) (u v) c -> b c u i v j', **sizes))
        return rearrange(out, 'b c u i v j -> b c (u i) (v j)')
    out = (rearrange(x, 'b c (i u) (j v) -> b c i u j v', **sizes)
           + rearrange(windows, '(b i j) (u v) c -> b c i u j v', **sizes))
    return rearrange(out, 'b c i u j v -> b c (i u) (j v)')


def relative_position_index(window_size):
    """Index into the (2w-1)^2 relative-position table for every pair of window tokens.

    For tokens p = (u1, v1) and q = (u2, v2) the index is
    ``(u1 - u2 + w - 1) * (2w - 1) + (v1 - v2 + w - 1)``.

    Returns:
        Tensor: (w*w, w*w) int64.
    """
    pos = torch.arange(window_size)
    grid = torch.stack(torch.meshgrid(pos, pos, indexing='ij')).flatten(1).t()  # (w*w, 2)
    rel = grid[:, None, :] - grid[None, :, :] + window_size - 1
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


# ----------------------------------------------------------------------------------------
# small building blocks
# ----------------------------------------------------------------------------------------
class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor.

    Mean and biased variance over C at every pixel, then a per-channel affine.

    Args:
        dim (int): Number of channels.
        eps (float): Added to the variance. Default: 1e-6.
    """

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        # statistics in float32 whatever the input's dtype (a no-op in fp32); two passes
        # (mean, then mean of squared deviations): on CPU about 2.5x faster than
        # torch.var_mean over the strided channel axis, and as accurate
        dtype = x.dtype
        x = x.float()
        x = x - x.mean(dim=1, keepdim=True)
        x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None]).to(dtype)


class GatedFeedForward(nn.Module):
    """Gated depthwise-conv feed-forward (``gfn``), no biases.

    ``project_in`` (1x1, dim -> 2 dim), ``dwconv`` (depthwise 3x3), split into halves
    (a, b), ``project_out(gelu(a) * b)`` (1x1, dim -> dim).

    Args:
        dim (int): Number of channels.
    """

    def __init__(self, dim):
        super().__init__()
        hidden = dim * 2
        self.project_in = nn.Conv2d(dim, hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class GlobalAvgPool(nn.Module):
    """Mean over H and W: (B, C, H, W) -> (B, C)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation gate: ``x * sigmoid(W2 silu(W1 mean_hw(x)))``.

    Args:
        dim (int): Number of channels.
        shrinkage_rate (float): Hidden width is ``int(dim * shrinkage_rate)``. Default: 0.25.
    """

    def __init__(self, dim, shrinkage_rate=0.25):
        super().__init__()
        hidden = int(dim * shrinkage_rate)
        self.gate = nn.Sequential(
            GlobalAvgPool(),
            nn.Linear(dim, hidden, bias=False),
            nn.SiLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.gate(x)[:, :, None, None]


class Residual(nn.Module):
    """``fn(x) + x``.

    Args:
        fn (nn.Module): The wrapped branch.
    """

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class LocalBlock(nn.Module):
    """Local block (LB): an MBConv-style conv branch with squeeze-excitation and a residual.

    ``fn``: 1x1 conv, GELU, depthwise 3x3 conv, GELU, squeeze-excitation, 1x1 conv (all
    convs with bias, exact erf GELU); output ``fn(x) + x``.

    Args:
        dim (int): Number of channels.
    """

    def __init__(self, dim):
        super().__init__()
        self.net = Residual(
            nn.Sequential(
                nn.Conv2d(dim, dim, 1),
                nn.GELU(),
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
                nn.GELU(),
                SqueezeExcitation(dim),
                nn.Conv2d(dim, dim, 1),
            ))

    def forward(self, x):
        return self.net(x)


# ----------------------------------------------------------------------------------------
# spatial self-attention (SLA / SGA)
# ----------------------------------------------------------------------------------------
class WindowAttention(nn.Module):
    """Single-head self-attention inside windows, with a learned relative-position bias.

    Computes the attention map and returns it so that later groups can share it.

    Args:
        dim (int): Token width (one head of this width).
        window_size (int): Window side w; windows hold w*w tokens.
    """

    def __init__(self, dim, window_size=8):
        super().__init__()
        self.scale = dim**-0.5
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))  # release: to_out.1 is Dropout(p=0)
        self.rel_pos_bias = nn.Embedding((2 * window_size - 1)**2, 1)
        self.register_buffer('rel_pos_index', relative_position_index(window_size), persistent=False)

    def forward(self, x):
        """
        Args:
            x (Tensor): (N, w*w, dim) normalised window tokens.

        Returns:
            tuple[Tensor, Tensor]: output tokens (N, w*w, dim) and the attention map
            (N, w*w, w*w), softmax over keys (computed in float32, stored in x's dtype).
        """
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        bias = self.rel_pos_bias.weight.view(-1)[self.rel_pos_index]  # (w*w, w*w)
        sim = torch.baddbmm(bias.to(q.dtype), q, k.transpose(1, 2), alpha=self.scale)
        attn = sim.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        return self.to_out(torch.bmm(attn, v)), attn


class SharedWindowAttention(nn.Module):
    """Window attention that applies a given (shared) attention map: ``to_out(a @ to_v(x))``.

    Args:
        dim (int): Token width.
    """

    def __init__(self, dim):
        super().__init__()
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))  # release: to_out.1 is Dropout(p=0)

    def forward(self, x, attn):
        """
        Args:
            x (Tensor): (N, w*w, dim) normalised window tokens.
            attn (Tensor): (N, w*w, w*w) attention map from the attention-computing group.

        Returns:
            tuple[Tensor, Tensor]: output tokens (N, w*w, dim) and ``attn`` unchanged.
        """
        v = self.to_v(x)
        return self.to_out(torch.bmm(attn.to(v.dtype), v)), attn


class SpatialSelfAttention(nn.Module):
    """Spatial self-attention layer over local (SLA) or grid (SGA) windows, then a gated FFN.

    ``t = windows(x); t = t + attn(norm(t)); x = unwindow(t); x = x + gfn(cnorm(x))``.

    Args:
        dim (int): Number of channels.
        window_size (int): Window side. Default: 8.
        grid (bool): False for local windows (SLA), True for grid windows (SGA).
            See :func:`window_partition`. Default: False.
        share (bool): False: compute the attention map (:class:`WindowAttention`);
            True: use the map passed to :meth:`forward` (:class:`SharedWindowAttention`).
            Default: False.
    """

    def __init__(self, dim, window_size=8, grid=False, share=False):
        super().__init__()
        self.window_size = window_size
        self.grid = grid
        self.share = share
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.attn = SharedWindowAttention(dim) if share else WindowAttention(dim, window_size)
        self.cnorm = ChannelLayerNorm(dim)
        self.gfn = GatedFeedForward(dim)

    def forward(self, x, attn=None):
        """
        Args:
            x (Tensor): (B, C, H, W), H and W multiples of the window size.
            attn (Tensor | None): Shared attention map; required iff ``share``.

        Returns:
            tuple[Tensor, Tensor]: (B, C, H, W) features and the attention map used.
        """
        t = window_partition(x, self.window_size, self.grid)
        if self.share:
            y, attn = self.attn(self.norm(t), attn)
        else:
            y, attn = self.attn(self.norm(t))
        x = add_windows(x, y, self.window_size, self.grid)
        return self.gfn(self.cnorm(x)) + x, attn


# ----------------------------------------------------------------------------------------
# channel self-attention (BlockC)
# ----------------------------------------------------------------------------------------
class ChannelSelfAttention(nn.Module):
    """Channel self-attention (C x C map) within groups of pixels (``cttn``).

    ``qkv`` (1x1) and ``qkv_dwconv`` (depthwise 3x3), no biases, split q, k, v. In every
    group q and k are L2-normalised along the token axis,
    ``out = softmax(q k^T * temperature) v``, then ``project_out`` (1x1, no bias).

    Args:
        dim (int): Number of channels.
        window_size (int): Window side w. Default: 8.
        grid (bool): False (``cttn1``): one group per w x w window, its w*w pixels are the
            tokens. True (``cttn2``): one group per offset (p, q) in [0, w)^2, its tokens
            are the pixels at rows w*i + p, cols w*j + q. Default: False.
    """

    def __init__(self, dim, window_size=8, grid=False):
        super().__init__()
        self.window_size = window_size
        self.grid = grid
        self.temperature = nn.Parameter(torch.ones(1, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        b, c, h, w = x.shape
        ws = self.window_size
        sizes = dict(b=b, i=h // ws, j=w // ws, p=ws, q=ws)  # pixel (w*i + p, w*j + q)
        # one group of tokens per offset (p, q) (grid) or per window (i, j); channels, then tokens
        groups = '(b p q) c (i j)' if self.grid else '(b i j) c (p q)'
        qkv = rearrange(self.qkv_dwconv(self.qkv(x)), f'b c (i p) (j q) -> {groups}', p=ws, q=ws)
        q, k, v = qkv.chunk(3, dim=1)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = torch.bmm(q, k.transpose(1, 2)) * self.temperature
        attn = attn.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        out = torch.bmm(attn, v)
        return self.project_out(rearrange(out, f'{groups} -> b c (i p) (j q)', **sizes))


class ChannelAttentionBlock(nn.Module):
    """``BlockC``: local then grid channel self-attention, each followed by a gated FFN.

    ``x = cttn1(canorm1(x)) + x; x = gfn1(cnorm1(x)) + x;``
    ``x = cttn2(canorm2(x)) + x; x = gfn2(cnorm2(x)) + x``.

    Args:
        dim (int): Number of channels.
        window_size (int): Window side. Default: 8.
    """

    def __init__(self, dim, window_size=8):
        super().__init__()
        self.canorm1 = ChannelLayerNorm(dim)
        self.canorm2 = ChannelLayerNorm(dim)
        self.cttn1 = ChannelSelfAttention(dim, window_size, grid=False)
        self.cttn2 = ChannelSelfAttention(dim, window_size, grid=True)
        self.cnorm1 = ChannelLayerNorm(dim)
        self.cnorm2 = ChannelLayerNorm(dim)
        self.gfn1 = GatedFeedForward(dim)
        self.gfn2 = GatedFeedForward(dim)

    def forward(self, x):
        x = self.cttn1(self.canorm1(x)) + x
        x = self.gfn1(self.cnorm1(x)) + x
        x = self.cttn2(self.canorm2(x)) + x
        return self.gfn2(self.cnorm2(x)) + x


# ----------------------------------------------------------------------------------------
# distillation block, ESA, groups
# ----------------------------------------------------------------------------------------
class InformationDistillationBlock(nn.Module):
    """Three distillation stages (LB, SLA, SGA), each splitting off c/4 channels, then BlockC.

    With c = ``dim`` and s = c / 4::

        x = LB1(x);  loc, x = x[:, :s], x[:, s:]          # s | 3s
        x = SGA1(SLA1(x));  x = pw1(cat(x, loc))          # 4s
        x1, x = x[:, :s], x[:, s:];  x = LB2(x)           # s | 3s
        loc, x = x[:, :s], x[:, s:]                       # s | 2s
        x = SGA2(SLA2(x));  x = pw2(cat(x, loc))          # 3s
        x2, x = x[:, :s], x[:, s:];  x = LB3(x)           # s | 2s
        loc, x = x[:, :s], x[:, s:]                       # s | s
        x = SGA3(SLA3(x));  x = pw3(cat(x1, x2, x, loc))  # 4s
        x = BlockC(x)

    Args:
        dim (int): Number of channels c (a multiple of 4).
        window_size (int): Window side. Default: 8.
        share (bool): Whether the six SLA/SGA layers use given attention maps. Default: False.
    """

    def __init__(self, dim, window_size=8, share=False):
        super().__init__()
        s = dim // 4
        self.split = s
        self.LB1 = LocalBlock(dim)
        self.LB2 = LocalBlock(dim - s)
        self.LB3 = LocalBlock(dim - 2 * s)
        self.SLA1 = SpatialSelfAttention(dim - s, window_size, grid=False, share=share)
        self.SLA2 = SpatialSelfAttention(dim - 2 * s, window_size, grid=False, share=share)
        self.SLA3 = SpatialSelfAttention(dim - 3 * s, window_size, grid=False, share=share)
        self.SGA1 = SpatialSelfAttention(dim - s, window_size, grid=True, share=share)
        self.SGA2 = SpatialSelfAttention(dim - 2 * s, window_size, grid=True, share=share)
        self.SGA3 = SpatialSelfAttention(dim - 3 * s, window_size, grid=True, share=share)
        self.BlockC = ChannelAttentionBlock(dim, window_size)
        self.pw1 = nn.Conv2d(dim, dim, 1)
        self.pw2 = nn.Conv2d(dim - s, dim - s, 1)
        self.pw3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x, maps=None):
        """
        Args:
            x (Tensor): (B, dim, H, W).
            maps (tuple[Tensor] | None): The six maps (SLA1, SGA1, SLA2, SGA2, SLA3, SGA3)
                for a sharing block; None for a computing block.

        Returns:
            tuple[Tensor, tuple[Tensor]]: features and the six maps used.
        """
        s = self.split
        a1, a2, a3, a4, a5, a6 = maps if maps is not None else (None, ) * 6
        x = self.LB1(x)
        loc, x = x[:, :s], x[:, s:]
        x, a1 = self.SLA1(x, a1)
        x, a2 = self.SGA1(x, a2)
        x = self.pw1(torch.cat((x, loc), dim=1))
        x1, x = x[:, :s], x[:, s:]
        x = self.LB2(x)
        loc, x = x[:, :s], x[:, s:]
        x, a3 = self.SLA2(x, a3)
        x, a4 = self.SGA2(x, a4)
        x = self.pw2(torch.cat((x, loc), dim=1))
        x2, x = x[:, :s], x[:, s:]
        x = self.LB3(x)
        loc, x = x[:, :s], x[:, s:]
        x, a5 = self.SLA3(x, a5)
        x, a6 = self.SGA3(x, a6)
        x = self.pw3(torch.cat((x1, x2, x, loc), dim=1))
        return self.BlockC(x), (a1, a2, a3, a4, a5, a6)


class EnhancedSpatialAttention(nn.Module):
    """Enhanced spatial attention (``esa``).

    ``c1_ = conv1(x)``; ``c = conv3(maxpool7/3(conv2(c1_)))`` with ``conv2`` 3x3 stride 2
    without padding; bilinear resize of ``c`` to H x W (align_corners=False);
    ``return x * sigmoid(conv4(c + conv_f(c1_)))``.

    The input must be at least :data:`ESA_MIN_SIZE` (15) px on each side; :class:`ASID`
    guarantees that by padding (see its docstring).

    Args:
        dim (int): Number of channels of x.
        esa_channels (int): Channels inside the branch. Default: 16.
    """

    def __init__(self, dim, esa_channels=ESA_CHANNELS):
        super().__init__()
        f = esa_channels
        self.conv1 = nn.Conv2d(dim, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, dim, 1)

    def forward(self, x):
        c1_ = self.conv1(x)
        c = F.max_pool2d(self.conv2(c1_), kernel_size=7, stride=3)
        c = F.interpolate(self.conv3(c), size=x.shape[-2:], mode='bilinear', align_corners=False)
        return x * torch.sigmoid(self.conv4(c + self.conv_f(c1_)))


class AttentionComputingGroup(nn.Module):
    """First group (``block0``): distillation block computing the six attention maps.

    ``y = residual_layer(x); y = res_end(y) + x; return esa(y), maps``. The distillation
    block sits in a one-element list (keys ``residual_layer.0.*``, as in the release).

    Args:
        dim (int): Number of channels.
        window_size (int): Window side. Default: 8.
    """

    def __init__(self, dim, window_size=8):
        super().__init__()
        self.residual_layer = nn.ModuleList([InformationDistillationBlock(dim, window_size, share=False)])
        self.res_end = nn.Conv2d(dim, dim, 1)
        self.esa = EnhancedSpatialAttention(dim)

    def forward(self, x):
        y, maps = self.residual_layer[0](x)
        return self.esa(self.res_end(y) + x), maps


class AttentionSharingGroup(nn.Module):
    """Later group (``block1`` ...): distillation block reusing ``block0``'s attention maps.

    Args:
        dim (int): Number of channels.
        window_size (int): Window side. Default: 8.
    """

    def __init__(self, dim, window_size=8):
        super().__init__()
        self.residual_layer = InformationDistillationBlock(dim, window_size, share=True)
        self.res_end = nn.Conv2d(dim, dim, 1)
        self.esa = EnhancedSpatialAttention(dim)

    def forward(self, x, maps):
        y, _ = self.residual_layer(x, maps)
        return self.esa(self.res_end(y) + x)


# ----------------------------------------------------------------------------------------
# top level
# ----------------------------------------------------------------------------------------
def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_value_range(value_range):
    try:
        vr = tuple(float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f'value_range must be (0, 1) or (-1, 1), got {value_range!r}') from None
    if vr not in ((0.0, 1.0), (-1.0, 1.0)):
        raise ValueError(f'value_range must be (0, 1) or (-1, 1), got {value_range!r}')
    return (int(vr[0]), int(vr[1]))


@ARCH_REGISTRY.register()
class ASID(nn.Module):
    """ASID super-resolution network.

    Input and output are RGB tensors (N, 3, H, W) -> (N, 3, H*s, W*s) in ``value_range``
    terms given below; any H, W >= 1 and any batch size.

    Padding: the input is padded with zeros at the bottom and right to multiples of
    ``window_size`` (in the network's internal range, see ``value_range``), and the output
    cropped back to (H*s, W*s), as in the release.

    Tiny inputs: the release fails when the padded input is smaller than 15 px on a side
    (the ESA branch's strided conv + 7x7 max-pool has nothing to pool), i.e. for H or W
    <= 8 with window 8. Here the padded size is additionally raised to at least
    :attr:`min_size` (the smallest multiple of ``window_size`` >= 15, i.e. 16) with the
    same bottom/right zero padding, and the output cropped as usual. Whenever the release
    runs (padded size already >= 16) this changes nothing, so the outputs are identical to
    the release's; the network's definition itself (ESA included) is never altered.

    Args:
        upscale (int): Upscaling factor s. Default: 4.
        num_groups (int): Number of groups: ``block0`` computes the attention maps,
            ``block1`` .. ``block{n-1}`` share them. 3 for ASID, 8 for ASID-D8. Default: 3.
        num_feat (int): Feature channels c, a multiple of 4. Default: 48.
        window_size (int): Attention window side. Default: 8.
        value_range (tuple|list): Range of the input/output images, (0, 1) or (-1, 1).
            (0, 1): the network runs on the data as given (BasicSR convention).
            (-1, 1): data in [0, 1] is mapped to x*2-1 before the network and (y+1)/2 after
            it, so zero padding is mid-grey; this is how the authors' released models were
            trained and evaluated, use it for their checkpoints. Default: (0, 1).

    How the network runs (compiled, in reduced precision, as CUDA graphs) is not its concern:
    that is chosen by the training Model (:class:`basicsr_ext.training.models.ASIDModel`, options
    ``train: compile/precision``) and by the inference helper
    (:class:`asid_arch.inference.ASIDUpsampler`), which run this same module.
    """

    def __init__(self, upscale=4, num_groups=3, num_feat=48, window_size=8, value_range=(0, 1)):
        super().__init__()
        if not _is_int(upscale) or upscale < 1:
            raise ValueError(f'upscale must be a positive integer, got {upscale!r}')
        if not _is_int(num_groups) or num_groups < 1:
            raise ValueError(f'num_groups must be a positive integer, got {num_groups!r}')
        if not _is_int(num_feat) or num_feat < 4 or num_feat % 4:
            raise ValueError(f'num_feat must be a positive multiple of 4, got {num_feat!r}')
        if not _is_int(window_size) or window_size < 1:
            raise ValueError(f'window_size must be a positive integer, got {window_size!r}')
        self.upscale = int(upscale)
        self.num_groups = int(num_groups)
        self.num_feat = int(num_feat)
        self.window_size = int(window_size)
        self.value_range = _check_value_range(value_range)
        #: Minimum padded side (see the class docstring, "Tiny inputs").
        self.min_size = math.ceil(ESA_MIN_SIZE / self.window_size) * self.window_size

        self.input = nn.Conv2d(3, num_feat, 3, padding=1)
        self.block0 = AttentionComputingGroup(num_feat, window_size)
        for i in range(1, num_groups):
            setattr(self, f'block{i}', AttentionSharingGroup(num_feat, window_size))
        self.output = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.up = nn.Sequential(nn.Conv2d(num_feat, 3 * upscale * upscale, 3, padding=1), nn.PixelShuffle(upscale))

    def check_input(self, x):
        """Raise ValueError unless ``x`` is a (N, 3, H, W) floating-point tensor with N, H, W >= 1."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f'ASID expects a tensor of shape (N, 3, H, W), got {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'ASID expects a 4-D tensor (N, 3, H, W), got a {x.dim()}-D tensor of shape '
                             f'{tuple(x.shape)}')
        if x.shape[1] != 3:
            raise ValueError(f'ASID expects 3 input channels (RGB) in dim 1, got {x.shape[1]} channels '
                             f'(input shape {tuple(x.shape)})')
        if x.numel() == 0:
            raise ValueError(f'ASID expects a non-empty input, got shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'ASID expects a floating-point tensor, got dtype {x.dtype}')

    def padded_size(self, h, w):
        """Size (H', W') the network runs at for an h x w input (see "Tiny inputs")."""
        ws = self.window_size
        return (max(self.min_size, math.ceil(h / ws) * ws), max(self.min_size, math.ceil(w / ws) * ws))

    def body(self, x):
        """The network between padding and cropping: padded input -> upscaled output."""
        shallow = self.input(x)
        feat, maps = self.block0(shallow)
        for i in range(1, self.num_groups):
            feat = getattr(self, f'block{i}')(feat, maps)
        return self.up(self.output(feat) + shallow)

    def to_network_range(self, x):
        """[0, 1] data -> the range the network computes in (``value_range``)."""
        return x * 2 - 1 if self.value_range[0] == -1 else x

    def from_network_range(self, out):
        """The inverse of :meth:`to_network_range`."""
        return (out + 1) / 2 if self.value_range[0] == -1 else out

    def forward(self, x):
        self.check_input(x)
        h, w = x.shape[-2:]
        x = self.to_network_range(x)
        ph, pw = self.padded_size(h, w)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))

        out = self.body(x)

        s = self.upscale
        out = self.from_network_range(out[:, :, :h * s, :w * s])
        return out.to(x.dtype)  # the input's dtype, also under torch.autocast


@ARCH_REGISTRY.register()
class ASID_D8(ASID):
    """ASID-D8 ("ASIDd8"): :class:`ASID` with 8 groups by default.

    Args: as :class:`ASID`, with ``num_groups`` defaulting to 8.
    """

    def __init__(self, upscale=4, num_groups=8, num_feat=48, window_size=8, value_range=(0, 1)):
        super().__init__(upscale=upscale, num_groups=num_groups, num_feat=num_feat, window_size=window_size,
                         value_range=value_range)
