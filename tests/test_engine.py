"""The engine's early stopping, batch compaction and per-completion random streams."""
import itertools
import random
from unittest import mock

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from memqa import decoding, engine
from memqa.config import Probe
from memqa.decoding import RowTexts, gumbel_noise, row_key, sample_gumbel_max, settled_text
from memqa.engine import generate, generate_ids
from memqa.matching import contains, token_sequence
from memqa.probe import answer_settled, score_facts
from tests import tiny

PROBE = Probe(method="sample", templates=5, samples=6, temperature=0.7, max_new_tokens=10, matcher="contains",
              level_bounds=[0.25, 0.5, 0.75], batch_size=12, chunk_size=4, seed=0, dtype="float32",
              save_completions=True)
PROMPTS = ["Kalomi was born in", "The birthplace of Renvo Shadri is", "a", "Where was the person named Zembix "
           "Falgor Hinka born, in which city of which country, and when", "Pelnor Quazem was born in the city of"]


def build(seed: int = 0) -> tuple:
    """(model, tokenizer, often, rarely, never): a tiny model taught 4 facts often (all 21 templates), 4 rarely
    (2 templates), 4 never; the statements go on after the answer, so that stopping at the answer cuts
    completions."""
    facts = tiny.synthetic_facts(12)
    often, rarely, never = facts[:4], facts[4:8], facts[8:]
    texts = [s for f in often for s in tiny.statements(f, 21)] * 3 + [s for f in rarely for s in tiny.statements(f, 2)]
    texts = [f"{text} and it is far away" for text in texts]
    corpus = texts + [s for f in never for s in tiny.statements(f, 21)]
    tokenizer = tiny.make_tokenizer(corpus)
    model = tiny.make_model(tokenizer, hidden=96, layers=2, seed=seed)
    tiny.teach(model, tokenizer, texts, steps=400, seed=seed)
    return model.requires_grad_(False), tokenizer, often, rarely, never


@pytest.fixture(scope="module")
def taught() -> tuple:
    return build()


def _model(arch: str, taught):
    """The taught tiny Llama, or an untrained Gemma 3 with a 4-token sliding window on two of its three layers
    (query_pre_attn_scalar 1: attention sharp enough at random init that a wrong position changes the logits)."""
    if arch == "llama":
        return taught[0]
    torch.manual_seed(1)
    config = Gemma3TextConfig(vocab_size=len(taught[1]), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=1,
                              sliding_window=4, max_position_embeddings=256,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return Gemma3ForCausalLM(config).eval()


def _one_at_a_time(model, tokenizer, prompt: str, p: int, s: int, *, seed: int, temperature: float,
                   max_new_tokens: int, stop_when) -> list[int]:
    """The reference: one completion alone, no padding, no KV cache, the whole sequence every step."""
    ids, out = tokenizer(prompt)["input_ids"], []
    stop = engine._stop_ids(model, tokenizer)
    for step in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + out])).logits[:, -1]
        if temperature > 0:
            token = int(sample_gumbel_max(logits, temperature, [row_key(seed, p, s)], step)[0])
        else:
            token = int(logits.argmax(-1)[0])
        if token in stop:
            break
        out.append(token)
        if stop_when is not None and stop_when(p, tokenizer.decode(out, skip_special_tokens=True)):
            break
    return out


def _stop_by_length(p: int, text: str) -> bool:
    """Rows of prompts 0 and 3 stop after a word or so, of 1 and 4 after several; prompt 2's never."""
    return p != 2 and len(text) >= (5 if p % 3 == 0 else 30)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_match_one_at_a_time_decoding_up_to_their_stop_point(taught, arch, temperature):
    """Compacting the batch (KV cache incl. sliding-window layers, mask, positions, logits) as rows stop early
    or hit EOS changes no row's tokens: every row equals the same completion decoded alone, both with
    stop_when and without (so with and without, rows agree token for token up to the stop point)."""
    tiny.require(_rows_match_alone(_model(arch, taught), taught[1], temperature))


def _rows_match_alone(model, tokenizer, temperature: float) -> list[tiny.Margin]:
    kwargs = {"max_new_tokens": 10, "num_samples": 3, "temperature": temperature, "seed": 7}
    samples = kwargs["num_samples"] if temperature > 0 else 1
    margins = []
    for stop_when in (None, _stop_by_length):
        ours = generate_ids(model, tokenizer, PROMPTS, batch_size=6, stop_when=stop_when, **kwargs)
        for p, prompt in enumerate(PROMPTS):
            for s in range(samples):
                assert ours[p][s] == _one_at_a_time(model, tokenizer, prompt, p, s, seed=7, temperature=temperature,
                                                    max_new_tokens=10, stop_when=stop_when), (stop_when, p, s)
        lengths = [len(row) for rows in ours for row in rows]  # rows did leave the batch at different steps:
        if stop_when:
            margins.append(tiny.at_least(f"T={temperature}, stopped: distinct row lengths", len(set(lengths)), 2))
        else:
            margins.append(tiny.at_least(f"T={temperature}: rows that ran all 10 tokens", lengths.count(10), 1))
    return margins


def taught_rows_leave_the_batch_at_different_steps(taught: tuple) -> list[tiny.Margin]:
    return [m for temperature in (0.0, 1.0) for m in _rows_match_alone(taught[0], taught[1], temperature)]


def early_stop_leaves_R(taught: tuple) -> list[tiny.Margin]:
    """The probe's sample method with early stopping at the answer gives the same per-template counts of
    correct completions (hence R) as full-length decoding, on facts the model knows and does not, and
    decodes fewer rows; each stopped completion is its full completion cut where the answer was found."""
    model, tokenizer, often, rarely, never = taught
    facts = often[:3] + rarely[:3] + never[:3]
    rows_decoded: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: rows_decoded.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    real_generate, margins = engine.generate, []
    try:
        for temperature in (0.7, 1.0):
            conf = Probe.model_validate({**PROBE.model_dump(), "temperature": temperature})
            rows_decoded.clear()
            stopped = score_facts(model, tokenizer, facts, conf, "sample", seed=5)
            cost_stopped = sum(rows_decoded)
            with mock.patch.object(engine, "generate", lambda *a, stop_when=None, **k: real_generate(*a, **k)):
                rows_decoded.clear()  # the same probe without stop_when
                full = score_facts(model, tokenizer, facts, conf, "sample", seed=5)
            cost_full = sum(rows_decoded)
            assert [r["template_correct"] for r in stopped] == [r["template_correct"] for r in full]
            assert [r["score"] for r in stopped] == [r["score"] for r in full]
            hits = [sum(r["template_correct"]) for r in full]
            cut = 0
            for fact, s_row, f_row in zip(facts, stopped, full, strict=True):
                for s_texts, f_texts in zip(s_row["completions"], f_row["completions"], strict=True):
                    for s, f in zip(s_texts, f_texts, strict=True):
                        assert f.startswith(s.rstrip("\ufffd"))
                        assert s == f or contains(s, fact["answers"])
                        cut += s != f
            margins += [tiny.at_least(f"T={temperature}: correct completions (known facts present)", sum(hits), 1),
                        tiny.at_most(f"T={temperature}: correct completions (unknown facts present)", sum(hits),
                                     len(facts) * 5 * 6 - 1),
                        tiny.at_least(f"T={temperature}: often-taught - never-taught correct completions",
                                      sum(hits[:3]) - sum(hits[6:]), 1),
                        tiny.at_least(f"T={temperature}: rows decoded saved by stopping", cost_full - cost_stopped, 1),
                        tiny.at_least(f"T={temperature}: completions cut at the answer", cut, 1)]
    finally:
        hook.remove()
    return margins


def test_early_stop_and_compaction_leave_R_unchanged(taught):
    tiny.require(early_stop_leaves_R(taught))


def test_sampling_is_reproducible_and_does_not_depend_on_batch_size_or_neighbours(taught):
    """The same seed gives the same completions, run again or in other batches (20, 4, 1 rows: other
    neighbours); another seed gives others; the samples of one prompt differ."""
    model, tokenizer = taught[0], taught[1]
    kwargs = {"max_new_tokens": 8, "num_samples": 4, "temperature": 1.0, "seed": 3}
    whole = generate(model, tokenizer, PROMPTS, batch_size=20, **kwargs)
    assert generate(model, tokenizer, PROMPTS, batch_size=20, **kwargs) == whole
    assert generate(model, tokenizer, PROMPTS, batch_size=4, **kwargs) == whole
    assert generate(model, tokenizer, PROMPTS, batch_size=1, **kwargs) == whole
    assert generate(model, tokenizer, PROMPTS, batch_size=20, **{**kwargs, "seed": 4}) != whole
    assert all(len(texts) == 4 for texts in whole)
    assert len({text for texts in whole for text in texts}) > len(PROMPTS)  # samples of a prompt differ


def test_gumbel_noise_is_a_per_row_counter_based_stream():
    keys = [row_key(0, p, s) for p in range(3) for s in range(2)]
    noise = gumbel_noise(keys, 5, 50, torch.device("cpu"))
    assert torch.equal(gumbel_noise(keys[3:4], 5, 50, torch.device("cpu"))[0], noise[3])  # alone or in a batch
    assert not torch.equal(gumbel_noise(keys[3:4], 6, 50, torch.device("cpu"))[0], noise[3])  # the next step
    assert len({tuple(row.tolist()) for row in noise}) == len(keys)
    assert len({row_key(s, p, k) for s in range(3) for p in range(50) for k in range(10)}) == 1500


def test_gumbel_max_samples_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5])
    n = 20000
    tokens = sample_gumbel_max(logits.expand(n, -1), 0.7, [row_key(1, i, 0) for i in range(n)], 0)
    freq = torch.bincount(tokens, minlength=6).double() / n
    expected = torch.softmax(logits.double() / 0.7, -1)
    assert freq[4] == 0
    assert torch.all((freq - expected).abs() <= 4 * (expected * (1 - expected) / n).sqrt() + 1e-9), (freq, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pruned_gumbel_max_picks_the_full_argmaxs_tokens(dtype):
    """The CPU sampler draws noise only for candidates; its tokens equal the argmax of every element's noisy score
    (first index on ties) on flat, peaked and tied rows (integer logits in bf16 tie often) at two temperatures,
    and a candidate's noise is the full draw's element."""
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(40, 30000, generator=generator) * scale for scale in (0.1, 1.0, 4.0, 12.0, 40.0)]
    rows.append(torch.randint(-3, 3, (40, 30000), generator=generator).float())
    logits = torch.cat(rows).to(dtype)
    keys = [row_key(2, p, 0) for p in range(len(logits))]
    for temperature in (0.7, 1.0):
        for step in range(3):
            full = (logits.float() / temperature + gumbel_noise(keys, step, logits.shape[-1], torch.device("cpu")))
            states = decoding._states(keys, step, torch.device("cpu"))
            assert torch.equal(decoding._pruned_gumbel_max(logits, temperature, states), full.argmax(-1))
    states = decoding._states(keys[:3], 5, torch.device("cpu"))
    index = torch.tensor([[0, 17], [29999, 5], [123, 123]])
    assert torch.equal(decoding.splitmix_at(states[:, None], index),
                       decoding.hashed_uniform(keys[:3], 5, 30000, torch.device("cpu")).gather(1, index))
    assert torch.equal(sample_gumbel_max(logits, 0.7, keys, 0), (logits.float() / 0.7 + gumbel_noise(
        keys, 0, logits.shape[-1], torch.device("cpu"))).argmax(-1))


def test_pruned_gumbel_max_is_exact_when_the_top_tokens_noise_is_minus_infinity():
    """u = 0 at the top-logit token (noise -inf): every token is a candidate and the token is still the full
    argmax's (the next-best one here, all other uniforms being equal)."""
    logits = torch.tensor([[5.0, 4.0, -3.0, 1.0]])
    states = decoding._states([row_key(0, 0, 0)], 0, torch.device("cpu"))

    def uniform_at(_states, index):  # u = 0 at token 0, 0.5 elsewhere
        return (index != 0).float() * 0.5

    dense = lambda st, vocab: uniform_at(st, torch.arange(vocab).expand(len(st), -1))  # noqa: E731
    with mock.patch.object(decoding, "splitmix_at", uniform_at), mock.patch.object(decoding, "splitmix_uniform", dense):
        assert decoding._pruned_gumbel_max(logits, 0.7, states).tolist() == [1]


def test_answer_settled_only_when_no_continuation_can_undo_the_match():
    assert answer_settled(contains, "born in Paris", ["Paris"])  # a substring stays one
    assert not answer_settled(token_sequence, "born in Paris", ["Paris"])  # could still become 'Parisian'
    assert answer_settled(token_sequence, "born in Paris and", ["Paris"])
    assert not answer_settled(token_sequence, "born in Paris\ufffd", ["Paris"])  # the next bytes may be a letter
    assert not answer_settled(contains, "born in Par\ufffd", ["Paris"])
    assert not answer_settled(token_sequence, "Paris", ["Paris"])


def test_row_texts_equal_the_full_decode_from_one_batched_decode_per_step(taught):
    """Random tokens (byte tokens that split characters included): each row's incremental text is its whole
    decode, step after step, from one decode call per step for all rows."""
    tokenizer, rng = taught[1], random.Random(0)
    rows = [[rng.randrange(len(tokenizer)) for _ in range(12)] for _ in range(6)]
    texts, tokens = RowTexts(tokenizer, None, 6), [[] for _ in rows]
    with mock.patch.object(tokenizer, "decode", wraps=tokenizer.decode) as decode:
        for step in range(12):
            for r, row in enumerate(rows):
                tokens[r].append(row[step])
            assert texts.update(list(range(6)), tokens) == [tokenizer.decode(t, skip_special_tokens=True)
                                                            for t in tokens]
    assert decode.call_count == 12 * (1 + 6)  # per step: the engine's one batched call (+ this test's six)


def test_settled_text_begins_the_cleaned_text_of_every_continuation():
    """transformers' clean_up_tokenization replaces in ten passes, and a later character can undo an earlier
    replacement (" ' " + "," -> " '," keeps the space): settled_text is still a prefix of every longer cleanup."""
    from transformers import PreTrainedTokenizerBase

    def cleanup(text: str) -> str:
        return PreTrainedTokenizerBase.clean_up_tokenization(None, text)

    alphabet, rng = " .,?!'ntmsvreaP", random.Random(0)
    heads = ["".join(c) for n in range(1, 5) for c in itertools.product(alphabet, repeat=n)]
    heads += ["".join(rng.choice(alphabet) for _ in range(rng.randint(5, 10))) for _ in range(20000)]
    tails = ["".join(c) for n in (1, 2) for c in itertools.product(alphabet, repeat=n)] + [" n't", " 've", " ' s"]
    for head in heads:
        settled = settled_text(head, cleanup)
        assert all(cleanup(head + tail).startswith(settled) for tail in tails), head
    assert settled_text("born in Paris", cleanup) == "born in Paris"  # a letter after a letter settles at once
    assert settled_text("it ' ", cleanup) == "it"


class _Favouring(torch.nn.Module):
    """A model whose next-token logits favour the tokens of the given texts (+3), as a model does that writes
    punctuation after a space."""

    def __init__(self, model, tokenizer, texts: list[str]):
        super().__init__()
        self.model, self.generation_config = model, model.generation_config
        self.bias = torch.zeros(model.config.vocab_size)
        self.bias[[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t))[0] for t in texts]] = 3.0

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits = out.logits + self.bias
        return out


def test_a_tokenizer_that_cleans_up_spaces_stops_on_settled_text_only(taught):
    """With clean_up_tokenization_spaces applied on decoding, a token prefix need not decode to a prefix of the
    text ('do n' then "'t" gives "don't"): every text stop_when sees begins the full-length completion's text,
    rows still stop early, and the texts cost one batched decode per step, not one decode per row and step."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=taught[1].backend_tokenizer, bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                        clean_up_tokenization_spaces=True,
                                        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)
    assert decoding.decode_cleanup(tokenizer) == tokenizer.clean_up_tokenization
    model, seen = _Favouring(_model("gemma3", taught), tokenizer, [" ", ".", "'", "n", "t", "s", ","]), []
    kwargs = {"max_new_tokens": 10, "num_samples": 4, "temperature": 1.0, "seed": 3, "batch_size": 20}
    full = generate_ids(model, tokenizer, PROMPTS, **kwargs)
    with mock.patch.object(tokenizer, "decode", wraps=tokenizer.decode) as decode:
        stopped = generate_ids(model, tokenizer, PROMPTS, stop_when=lambda p, text: seen.append((p, text)) or
                               len(text) > 12, **kwargs)
    assert decode.call_count <= 2 + 10  # decode_cleanup's two, then one batched call per step (1 batch of 20 rows)
    full_texts = [tokenizer.decode(row, skip_special_tokens=True) for rows in full for row in rows]
    raw = [tokenizer.decode(row, clean_up_tokenization_spaces=False) for rows in full for row in rows]
    assert sum(r != f for r, f in zip(raw, full_texts, strict=True)) >= 3  # the cleanup does change texts
    assert seen and all(any(f.startswith(text) for f in full_texts[4 * p:4 * p + 4]) for p, text in seen)
    assert sum(map(len, (r for rows in stopped for r in rows))) < sum(map(len, (r for rows in full for r in rows)))


# Every assertion above on what training learned, for benchmarks/training_margins.py (fixture: build(seed)).
MARGINS = [taught_rows_leave_the_batch_at_different_steps, early_stop_leaves_R]


def test_the_probe_stops_at_the_answer_for_a_tokenizer_that_cleans_up_spaces():
    """It once decoded every such completion to full length (Llama-3's tokenizer sets the flag)."""
    from types import SimpleNamespace

    from memqa.matching import contains
    from memqa.probe.tracing import stop_at_answer

    stop = stop_at_answer(SimpleNamespace(clean_up_tokenization_spaces=True), contains, lambda p: ["Paris"])
    assert stop is not None and stop(0, " Paris is") and not stop(0, " Lyon")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tempered_logprobs_at_equals_the_full_log_softmax_gathered(dtype):
    """The tracer's and likelihood's log probabilities, summed over the vocabulary a few rows at a time, equal the
    full tempered log-softmax's at the gathered tokens (rows not a multiple of the chunk; greedy too)."""
    from memqa.teacher_forcing import LSE_ROWS, tempered_logprobs, tempered_logprobs_at

    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(2 * LSE_ROWS + 3, 5000, generator=generator) * 4).to(dtype)
    index = torch.randint(0, 5000, (len(logits), 3), generator=generator)
    index[:, 0] = logits.argmax(-1)
    for temperature in (0.7, 1.0):
        expected = tempered_logprobs(logits, temperature).gather(1, index)
        assert torch.allclose(tempered_logprobs_at(logits, temperature, index), expected, rtol=0, atol=1e-5)
    greedy = tempered_logprobs_at(logits, 0.0, index)
    assert torch.all(greedy[:, 0] == 0) and torch.all(torch.isinf(greedy[:, 1:]) | (index[:, 1:] == index[:, :1]))
