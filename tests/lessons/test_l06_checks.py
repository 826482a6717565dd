"""Lesson 06's checks, as a student meets them: correct implementations written differently from the
reference pass (public and hidden cases, on every device here); the mistakes students make, written
as they write them, fail with the mistake's name; shortcuts are refused; a layer that hides the
future only on the cases' lengths is caught by the behaviour.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import attention
from course_lib.grading import check_CausalSelfAttention, check_merge_heads, check_MultiHeadAttention, check_split_heads
from course_lib.grading import l06_multi_head_attention as lesson
from failing import check_fails as _fails, check_passes

HIDDEN_SEEDS = (1, 2, 3, 7, 11)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- correct implementations, written differently from the reference -------------------------------


def split_heads(x, num_heads):
    return x.unflatten(-1, (num_heads, -1)).permute(0, 2, 1, 3)  # (B, L, H, d) -> (B, H, L, d)


def merge_heads(x):
    return x.permute(0, 2, 1, 3).contiguous().view(x.shape[0], x.shape[2], -1)  # (B, L, H·d)


class StudentMHA(nn.Module):
    """einsum, torch.softmax, masks turned into one additive bias; helpers of its own."""

    def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        wide = torch.float32 if q.dtype == torch.bfloat16 else q.dtype  # bfloat16 scores in float32
        scores = torch.einsum("bhld,bhsd->bhls", q.to(wide), k.to(wide)) / math.sqrt(q.shape[-1])
        L, S = scores.shape[-2:]
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], -math.inf)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        elif attn_mask is not None:
            scores = scores + attn_mask
        if is_causal:
            future = torch.ones(L, S, dtype=torch.bool, device=query.device).triu(1)
            scores = scores.masked_fill(future, -math.inf)
        weights = torch.softmax(scores, dim=-1).to(query.dtype)
        return self.out_proj(merge_heads(weights @ v)), weights


class StudentCausal(nn.Module):
    def __init__(self, embed_dim, num_heads, bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x):
        B, L, E = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, E // self.num_heads)  # (B, L, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, d)
        scores = q @ k.transpose(-1, -2) * (E // self.num_heads) ** -0.5
        scores = scores + torch.full((L, L), -math.inf, device=x.device).triu(1)
        return self.out_proj(merge_heads(torch.softmax(scores, -1) @ v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", [
    (check_split_heads, split_heads), (check_merge_heads, merge_heads),
    (check_MultiHeadAttention, StudentMHA), (check_CausalSelfAttention, StudentCausal),
    # each known mistake is the reference with one knob turned: untouched, it is right
    (check_split_heads, lesson.split_variant), (check_merge_heads, lesson.merge_variant),
    (check_MultiHeadAttention, lesson.mha_variant), (check_CausalSelfAttention, lesson.causal_variant),
])
def test_correct_implementations_pass(check, fn, device, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_DEVICE", device)
    check_passes(check, fn, capsys, HIDDEN_SEEDS)


# --- mistakes, as students write them ----------------------------------------------------------------



def _mha(forward):
    """A StudentMHA whose forward is ``forward``."""
    return type("MHA", (StudentMHA,), {"forward": forward})


def _with_view_no_transpose(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
    B, L, E = query.shape
    H = self.num_heads
    q = self.q_proj(query).view(B, H, L, E // H)  # the classic bug: right shape, wrong numbers
    k = self.k_proj(key).view(B, H, key.shape[1], E // H)
    v = self.v_proj(value).view(B, H, key.shape[1], E // H)
    scores = q @ k.transpose(-1, -2) / math.sqrt(E // H)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], -math.inf)
    if is_causal:
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
    weights = torch.softmax(scores, -1)
    return self.out_proj((weights @ v).transpose(1, 2).reshape(B, L, E)), weights


def test_split_without_transpose_inside_the_module_is_named():
    failure = _fails(check_MultiHeadAttention, _mha(_with_view_no_transpose), "without the transpose")
    assert failure.mistake == lesson._NO_TRANSPOSE


def test_a_copy_task_would_hide_the_missing_transposes_but_the_check_does_not():
    def split(x, num_heads):
        return x.reshape(x.shape[0], num_heads, x.shape[1], -1)

    def merge(x):
        return x.reshape(x.shape[0], x.shape[2], -1)

    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(merge(split(x, 3)), x)  # the round trip is exact: a copy task passes
    assert _fails(check_split_heads, split).mistake == lesson._NO_TRANSPOSE
    assert _fails(check_merge_heads, merge).mistake == lesson._MERGE_NO_TRANSPOSE


def test_scale_by_embed_dim_is_named():
    # A student scaling by √E: rebuild the scores with the wrong width.
    def wrong_scale(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(key), self.num_heads)
        v = split_heads(self.v_proj(value), self.num_heads)
        scores = q @ k.transpose(-1, -2) / math.sqrt(query.shape[-1])
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], -math.inf)
        weights = torch.softmax(scores, -1)
        return self.out_proj(merge_heads(weights @ v)), weights

    assert _fails(check_MultiHeadAttention, _mha(wrong_scale), "1/√embed_dim").mistake == lesson._SCALE_MISTAKE


def test_averaged_weights_are_named():
    def averaged(self, *args, **kwargs):
        out, weights = StudentMHA.forward(self, *args, **kwargs)
        return out, weights.mean(1)

    failure = _fails(check_MultiHeadAttention, _mha(averaged), "averaged over the heads", "(B, H, L, S)")
    assert failure.kind == "shape"


def test_pytorch_polarity_is_named():
    def inverted(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
        flip = (lambda m: ~m if m is not None and m.dtype == torch.bool else m)  # noqa: E731
        return StudentMHA.forward(self, query, key, value, flip(key_padding_mask), flip(attn_mask), is_causal)

    _fails(check_MultiHeadAttention, _mha(inverted), "nn.MultiheadAttention's polarity")


def test_padding_on_the_queries_is_named_with_torch_softmax_nan_rows_too():
    def on_queries(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
        q, k, v = (split_heads(p(t), self.num_heads) for p, t in
                   ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, :, None], -math.inf)  # rows: queries
        weights = torch.softmax(scores, -1)  # a padded query's row is all -inf: NaN
        return self.out_proj(merge_heads(weights @ v)), weights

    _fails(check_MultiHeadAttention, _mha(on_queries), "applied to the queries instead of the keys")


def test_a_causal_layer_that_leaks_the_future_is_named():
    class Leaks(StudentCausal):
        def forward(self, x):
            B, L, E = x.shape
            q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, -1))
            scores = q @ k.transpose(-1, -2) / math.sqrt(E // self.num_heads)
            scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).tril(-1), -math.inf)  # hides the past
            return self.out_proj(merge_heads(torch.softmax(scores, -1) @ v))

    _fails(check_CausalSelfAttention, Leaks, "leaks the future")


def test_a_causal_mask_that_leaks_only_on_other_lengths_is_caught_by_the_behaviour():
    class OnlyShort(StudentCausal):
        def forward(self, x):
            if x.shape[1] <= 8:  # the mask is right on the cases' lengths only
                return super().forward(x)
            B, L, E = x.shape
            q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, -1))
            return self.out_proj(merge_heads(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(E // self.num_heads), -1) @ v))

    failure = _fails(check_CausalSelfAttention, OnlyShort, "must not let a token see the future")
    assert failure.kind == "behaviour"


def test_a_broken_split_heads_is_blamed_before_the_module():
    def split_heads(x, num_heads):  # noqa: F811 - the student's own, wrong, helper
        return x.reshape(x.shape[0], num_heads, x.shape[1], -1)

    class Uses(StudentMHA):
        def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
            q = split_heads(self.q_proj(query), self.num_heads)
            return q, q

    failure = _fails(check_MultiHeadAttention, Uses, "your `split_heads`", "fails its own check")
    assert failure.kind == "dependency" and failure.blamed == "split_heads"


def test_wrong_parameter_names_are_said_in_words():
    class Fused(nn.Module):
        def __init__(self, embed_dim, num_heads, bias=True, kdim=None, vdim=None):
            super().__init__()
            self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
            self.out_proj = nn.Linear(embed_dim, embed_dim)

    _fails(check_MultiHeadAttention, Fused, "no parameter `q_proj.weight`")


# --- shortcuts are refused ---------------------------------------------------------------------------


def _torch_mha(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
    module = nn.MultiheadAttention(query.shape[-1], self.num_heads, batch_first=True,
                                   kdim=key.shape[-1], vdim=value.shape[-1]).to(query.device, query.dtype)
    mask = None if key_padding_mask is None else ~key_padding_mask
    return module(query, key, value, key_padding_mask=mask, average_attn_weights=False)


def _sdpa(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
    q, k, v = (split_heads(p(t), self.num_heads) for p, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
    return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))), None


def _course_sdpa(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):
    q, k, v = (split_heads(p(t), self.num_heads) for p, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
    return self.out_proj(merge_heads(attention.scaled_dot_product_attention(q, k, v, is_causal=is_causal))), None


def _course_mha(self, *args, **kwargs):
    ours = attention.MultiHeadAttention(self.q_proj.in_features, self.num_heads).to(self.q_proj.weight.device)
    return ours(*args, **kwargs)


@pytest.mark.parametrize("forward,word", [
    (_torch_mha, "multi_head_attention_forward"),
    (_sdpa, "scaled_dot_product_attention"),
    (_course_sdpa, "course_lib.attention.sdpa.scaled_dot_product_attention"),
    (_course_mha, "course_lib.attention.mha.MultiHeadAttention.forward"),
])
def test_shortcuts_are_refused(forward, word):
    failure = _fails(check_MultiHeadAttention, _mha(forward), "write the computation yourself")
    assert failure.kind == "shortcut" and word in failure.problem


@pytest.mark.parametrize("check,fn,word", [
    (check_split_heads, lambda x, num_heads: attention.split_heads(x, num_heads), "split_heads"),
    (check_merge_heads, lambda x: attention.merge_heads(x), "merge_heads"),
    (check_CausalSelfAttention, attention.CausalSelfAttention, "CausalSelfAttention.forward"),
])
def test_course_references_are_refused(check, fn, word):
    failure = _fails(check, fn, "course's own reference")
    assert failure.kind == "shortcut" and word in failure.problem


def test_torch_softmax_is_allowed_where_it_is_not_the_answer():
    check_CausalSelfAttention(StudentCausal)
