"""Autograd for the two-op custom kernels of ragged attention (a forward op returning the output and
what its backward needs, a backward op returning dq, dk, dv): the cuDNN backends wrap their kernels so."""
from __future__ import annotations


def register_ragged_autograd(forward_op, backward_op) -> None:
    """Make `forward_op(q, k, v, cu_seqlens, max_seqlen) -> (out, aux)` differentiable through
    `backward_op(grad_out, q, k, v, out, aux, cu_seqlens, max_seqlen) -> (dq, dk, dv)`."""

    def save(ctx, inputs, output):
        q, k, v, cu_seqlens, ctx.max_seqlen = inputs
        ctx.save_for_backward(q, k, v, *output, cu_seqlens)

    def grads(ctx, grad_out, _grad_aux):
        q, k, v, out, aux, cu_seqlens = ctx.saved_tensors
        return (*backward_op(grad_out, q, k, v, out, aux, cu_seqlens, ctx.max_seqlen), None, None)

    forward_op.register_autograd(grads, setup_context=save)
