"""The quantized twins beyond Conv2d and Linear, registered in ``QUANTIZED_TYPES`` when ``qfi_cli.quant`` is imported.

* ``QuanConv1d`` / ``QuanConv3d`` (``QuanConvMixin``, as Conv2d), ``QuanConvTranspose1d/2d/3d`` (output_size /
  output_padding as torch's ConvTransposeNd).
* Linear subclasses whose forward is Linear's: ``NonDynamicallyQuantizableLinear`` (MultiheadAttention's
  ``out_proj``) maps to ``QuanLinear``. The table is by exact type, so any other subclass stays float and is listed
  by ``float_layers`` (its forward may differ).
* ``QuanEmbedding``: quantized weight rows; the input is indices, so no input quantization (``abits`` is 32).
* ``QuanMultiheadAttention``: each stored weight tensor is one quantized layer, so every fault path sees it: the
  in-projection (``in_proj``, or ``q_proj`` / ``k_proj`` / ``v_proj`` when kdim / vdim differ from embed_dim) is a
  ``QuanWeight`` holder and ``out_proj`` a ``QuanLinear``; the forward is ``F.multi_head_attention_forward`` on the
  quantized weights. Query / key / value are quantized at ``abits`` by the in-projection holders; the attention
  output entering ``out_proj`` is not (it is computed inside torch's function). Biases stay float.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from qfi_cli.quant.layers import QuanConvMixin, QuantizedLayerMixin, QuanLinear, quantizes

quantizes(NonDynamicallyQuantizableLinear)(QuanLinear)  # same forward as Linear (MultiheadAttention's out_proj)


@quantizes(nn.Conv1d)
class QuanConv1d(QuanConvMixin, nn.Conv1d):
    """A Conv1d on quantized weights and inputs.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> QuanConv1d.from_float(nn.Conv1d(2, 4, 3), MinMaxQuantizer(), MinMaxQuantizer(), 8, 8)(torch.randn(1, 2, 9)).shape
    torch.Size([1, 4, 7])
    """


@quantizes(nn.Conv3d)
class QuanConv3d(QuanConvMixin, nn.Conv3d):
    """A Conv3d on quantized weights and inputs.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> QuanConv3d.from_float(nn.Conv3d(1, 2, 3), MinMaxQuantizer(), MinMaxQuantizer(), 8, 8)(torch.randn(1, 1, 4, 4, 4)).shape
    torch.Size([1, 2, 2, 2, 2])
    """


CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class QuanConvTransposeMixin(QuantizedLayerMixin):
    """What every quantized ConvTransposeNd shares: torch's constructor arguments and forward, on Q(w) and Q(x)."""

    @classmethod
    def from_float(cls, conv: nn.Module, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, output_padding=conv.output_padding, groups=conv.groups,
                    bias=conv.bias is not None, dilation=conv.dilation, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        return layer._adopt(conv, quan_w_fn, quan_a_fn, wbits, abits)

    def forward(self, x: torch.Tensor, output_size: Optional[list[int]] = None) -> torch.Tensor:
        dims = len(self.kernel_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, dims,
                                              self.dilation)
        return CONV_TRANSPOSE[dims](self.quantize_input(x), self.quantize_weight(), self.bias, self.stride,
                                    self.padding, output_padding, self.groups, self.dilation)


@quantizes(nn.ConvTranspose1d)
class QuanConvTranspose1d(QuanConvTransposeMixin, nn.ConvTranspose1d):
    """A ConvTranspose1d on quantized weights and inputs.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> up = QuanConvTranspose1d.from_float(nn.ConvTranspose1d(2, 3, 3, stride=2), MinMaxQuantizer(), MinMaxQuantizer(), 8, 8)
    >>> up(torch.randn(1, 2, 5)).shape, up(torch.randn(1, 2, 5), output_size=[12]).shape
    (torch.Size([1, 3, 11]), torch.Size([1, 3, 12]))
    """


@quantizes(nn.ConvTranspose2d)
class QuanConvTranspose2d(QuanConvTransposeMixin, nn.ConvTranspose2d):
    """A ConvTranspose2d on quantized weights and inputs.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> up = QuanConvTranspose2d.from_float(nn.ConvTranspose2d(2, 3, 2, stride=2), MinMaxQuantizer(), MinMaxQuantizer(), 8, 8)
    >>> up(torch.randn(1, 2, 4, 4)).shape
    torch.Size([1, 3, 8, 8])
    """


@quantizes(nn.ConvTranspose3d)
class QuanConvTranspose3d(QuanConvTransposeMixin, nn.ConvTranspose3d):
    """A ConvTranspose3d on quantized weights and inputs.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> up = QuanConvTranspose3d.from_float(nn.ConvTranspose3d(1, 2, 2, stride=2), MinMaxQuantizer(), MinMaxQuantizer(), 8, 8)
    >>> up(torch.randn(1, 1, 2, 2, 2)).shape
    torch.Size([1, 2, 4, 4, 4])
    """


@quantizes(nn.Embedding)
class QuanEmbedding(QuantizedLayerMixin, nn.Embedding):
    """An Embedding whose weight rows are quantized; the input is indices (``abits`` is 32: nothing to quantize).
    ``max_norm`` renormalises the float weight's looked-up rows first, as torch does, then they are quantized.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> emb = QuanEmbedding.from_float(nn.Embedding(10, 4, padding_idx=0), MinMaxQuantizer(), MinMaxQuantizer(), 8, 8)
    >>> emb(torch.tensor([[0, 3]])).shape, emb.abits, emb.padding_idx
    (torch.Size([1, 2, 4]), 32, 0)
    """

    @classmethod
    def from_float(cls, emb: nn.Embedding, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        layer = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, max_norm=emb.max_norm,
                    norm_type=emb.norm_type, scale_grad_by_freq=emb.scale_grad_by_freq, sparse=emb.sparse,
                    device=emb.weight.device, dtype=emb.weight.dtype)
        return layer._adopt(emb, quan_w_fn, quan_a_fn, wbits, 32)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None:
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, indices, self.max_norm, self.norm_type)
        return F.embedding(indices, self.quantize_weight(), self.padding_idx, None, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


class QuanWeight(QuantizedLayerMixin, nn.Module):
    """One stored weight tensor that is not a layer of its own (MultiheadAttention's in-projection): ``weight`` is
    quantized and faulted as any layer's; the owner calls ``quantize_weight()`` and ``quantize_input(x)``.

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> holder = QuanWeight(torch.ones(3, 2), MinMaxQuantizer(), MinMaxQuantizer(), 8, 32)
    >>> holder.quantize_weight().shape, holder.extra_repr()
    (torch.Size([3, 2]), 'shape=(3, 2), wbits=8, abits=32')
    """

    def __init__(self, weight: torch.Tensor, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int, abits: int):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self._init_quant(quan_w_fn, quan_a_fn, wbits, abits)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}" + super().extra_repr()


def _projections(mha: nn.MultiheadAttention, quan_w_fn, quan_a_fn, wbits: int, abits: int) -> nn.ModuleDict:
    """The in-projection holders of ``mha`` (each with its own copy of the quantizers)."""
    if mha._qkv_same_embed_dim:
        weights = {"in_proj": mha.in_proj_weight}
    else:
        weights = {"q_proj": mha.q_proj_weight, "k_proj": mha.k_proj_weight, "v_proj": mha.v_proj_weight}
    return nn.ModuleDict({name: QuanWeight(w, copy.deepcopy(quan_w_fn), copy.deepcopy(quan_a_fn), wbits, abits)
                          for name, w in weights.items()})


@quantizes(nn.MultiheadAttention)
class QuanMultiheadAttention(nn.Module):
    """MultiheadAttention on quantized in- and out-projection weights (see the module docstring).

    >>> from qfi_cli.quant.quantizers import MinMaxQuantizer
    >>> from qfi_cli.quant.layers import quantized_layers
    >>> mha = QuanMultiheadAttention.from_float(nn.MultiheadAttention(8, 2, batch_first=True), MinMaxQuantizer(),
    ...                                         MinMaxQuantizer(), 8, 8)
    >>> x = torch.randn(3, 5, 8)
    >>> mha(x, x, x)[0].shape, [name for name, _ in quantized_layers(mha)]
    (torch.Size([3, 5, 8]), ['proj.in_proj', 'out_proj'])
    """

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, quan_w_fn: nn.Module, quan_a_fn: nn.Module, wbits: int,
                   abits: int) -> "QuanMultiheadAttention":
        layer = cls()
        for key in ("embed_dim", "kdim", "vdim", "_qkv_same_embed_dim", "num_heads", "dropout", "batch_first",
                    "head_dim", "add_zero_attn", "in_proj_bias", "bias_k", "bias_v"):
            setattr(layer, key, getattr(mha, key))
        layer.proj = _projections(mha, quan_w_fn, quan_a_fn, wbits, abits)
        layer.out_proj = QuanLinear.from_float(mha.out_proj, quan_w_fn, quan_a_fn, wbits, abits)
        return layer.to(mha.out_proj.weight.device)

    def _quantized_inputs(self, query, key, value):
        """Q(query), Q(key), Q(value) by the in-projection holders, keeping which of them are the same tensor."""
        p = self.proj
        q_fn, k_fn, v_fn = ((p.in_proj,) * 3) if self._qkv_same_embed_dim else (p.q_proj, p.k_proj, p.v_proj)
        q = q_fn.quantize_input(query)
        k = q if key is query and k_fn is q_fn else k_fn.quantize_input(key)
        v = k if value is key and v_fn is k_fn else v_fn.quantize_input(value)
        return q, k, v

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        q, k, v = self._quantized_inputs(query, key, value)
        batched = query.dim() == 3
        if self.batch_first and batched:  # keep which are the same tensor (torch's packed in-projection path)
            t = {id(a): a.transpose(1, 0) for a in (q, k, v)}
            q, k, v = t[id(q)], t[id(k)], t[id(v)]
        if self._qkv_same_embed_dim:
            weights = {"in_proj_weight": self.proj.in_proj.quantize_weight()}
        else:
            weights = {"in_proj_weight": None, "use_separate_proj_weight": True,
                       **{f"{n}_weight": self.proj[n].quantize_weight() for n in ("q_proj", "k_proj", "v_proj")}}
        in_proj_weight = weights.pop("in_proj_weight")
        out, attn = F.multi_head_attention_forward(
            q, k, v, self.embed_dim, self.num_heads, in_proj_weight, self.in_proj_bias, self.bias_k, self.bias_v,
            self.add_zero_attn, self.dropout, self.out_proj.quantize_weight(), self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal, **weights)
        return (out.transpose(1, 0) if self.batch_first and batched else out), attn
