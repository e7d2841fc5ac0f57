"""Attention for packed rows on GPUs: one varlen flash call per layer instead of one SDPA call per conversation.

unsloth 2026.10 runs packed (padding-free) rows through torch's varlen flash kernel only when
`torch.nn.attention.varlen.varlen_attn` takes `enable_gqa` (torch ≥ 2.12); on torch 2.11 (the GPU machine's)
it falls back to one SDPA launch per run of equal-length conversations, which is launch-bound on FineTome-sized
rows (~37 conversations per 16k-token micro-batch × 16 layers × forward and backward). `enable_packed_varlen`
gives unsloth torch 2.11's varlen kernel with grouped-query attention done by repeating K and V per group, and
turns on unsloth's lean path (aten's flash varlen forward/backward, which take GQA natively). Import unsloth
first; call once per process before training.
"""
from __future__ import annotations


def enable_packed_varlen() -> str:
    """Turn the varlen path on in unsloth's attention dispatch; returns what was done (for the log)."""
    import inspect

    try:
        from unsloth.utils import attention_dispatch as dispatch
    except Exception as err:  # another unsloth layout: leave its own choice alone
        return f"unchanged (no unsloth attention dispatch: {type(err).__name__})"
    if dispatch._TORCH_VARLEN_ATTN is not None:
        return "unchanged (unsloth already uses torch's varlen kernel)"
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:
        return "unchanged (this torch has no varlen_attn)"
    if "window_size" not in inspect.signature(varlen_attn).parameters:
        return "unchanged (this torch's varlen_attn takes no window_size)"

    def with_gqa(query, key, value, *args, enable_gqa: bool = False, **kwargs):
        if enable_gqa and key.shape[-2] != query.shape[-2]:  # (tokens, heads, head_dim)
            groups = query.shape[-2] // key.shape[-2]
            key, value = key.repeat_interleave(groups, dim=-2), value.repeat_interleave(groups, dim=-2)
        return varlen_attn(query, key, value, *args, **kwargs)

    dispatch._TORCH_VARLEN_ATTN = with_gqa
    if not hasattr(dispatch, "_varlen_can_use_cudnn"):
        dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False  # aten flash, GQA included
    dispatch._LEAN_VARLEN = True
    return "on (torch varlen flash for packed rows)"
