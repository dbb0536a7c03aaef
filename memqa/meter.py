"""ComputeMeter: the forward work done on a model, counted the same way for every method (benchmarks, tests)."""
from __future__ import annotations


class ComputeMeter:
    """Counts the forward work done on a model while active (`with ComputeMeter(model) as meter:`).

    tokens: token positions through the decoder stack, padding included (it is computed);
    head_rows: hidden states through the output layer (one per decoding step per row, one per scored token);
    flops: 2 x (non-embedding parameters x tokens + output-layer parameters x head_rows), the matmul work
    (attention over these short sequences and the embedding lookup left out). Counted by forward hooks on
    the decoder and the output layer, so every method is measured the same way, whatever its code does.
    """

    def __init__(self, model):
        self.model = model
        self.tokens = self.head_rows = self.calls = 0
        self._hooks: list = []
        head = model.get_output_embeddings().weight
        embed = model.get_input_embeddings().weight
        unique = {id(p): p.numel() for p in model.parameters()}
        self.head_params = head.numel()
        self.body_params = sum(unique.values()) - embed.numel() - (0 if head is embed else head.numel())

    def _count_tokens(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.numel()
            self.calls += 1

    def _count_rows(self, module, args):
        self.head_rows += args[0].numel() // args[0].shape[-1]

    def __enter__(self) -> ComputeMeter:
        self._hooks = [self.model.get_decoder().register_forward_pre_hook(self._count_tokens, with_kwargs=True),
                       self.model.get_output_embeddings().register_forward_pre_hook(self._count_rows)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def flops(self) -> float:
        return 2.0 * (self.body_params * self.tokens + self.head_params * self.head_rows)

    def as_dict(self) -> dict:
        return {"forward_tokens": self.tokens, "head_rows": self.head_rows, "forward_calls": self.calls,
                "gflops": round(self.flops / 1e9, 3)}
