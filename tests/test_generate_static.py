"""Latent generation with a static KV cache and a compiled forward gives exactly what dynamic-cache decoding gives.

`cache_implementation="static"` is what transformers compiles the forward for (on a GPU by default; here on the CPU,
through `CompileConfig._compile_all_devices`). The compiled decoding step must see no graph break (`fullgraph=True`
raises on one) and compile once, not once per step; the latent logits processors must never read a device value.
"""

import pytest
import torch
from test_generate import GRIDS, PLAN, PROMPTS, ForceAt, assert_same_latents, no_early_stop
from tiny_models import LEND, LPAD, LSTART, pad_batch, random_pixels, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList

# a second plan: blocks open at other steps than PLAN's (row 1 twice), to show that a new pattern compiles nothing new
PLAN_B = {(5, 22): LSTART, (8, 2): LSTART, (8, 9): LSTART, (10, 24): LSTART, (16, 6): LSTART}
SAMPLING = dict(do_sample=True, temperature=0.7, top_p=0.9)


class CountingBackend:
    """A `torch.compile` backend that runs the captured graph as is and counts the graphs it is given."""

    def __init__(self):
        self.graphs = 0

    def __deepcopy__(self, memo):  # `CompileConfig.to_dict` deep-copies its fields: keep counting here
        return self

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def compiled(backend: CountingBackend) -> dict:
    """`generate` kwargs for a static cache whose decoding forward transformers compiles, also on the CPU, with
    `fullgraph=True`: a graph break in the decoding step raises instead of silently splitting the graph."""
    config = CompileConfig(backend=backend, fullgraph=True, mode=None)
    config._compile_all_devices = True
    return dict(cache_implementation="static", compile_config=config)


def run(model, seed=None, plan=PLAN, extra=(), **kwargs):
    """Generate PROMPTS (left-padded, with images, blocks opened by `plan`) as test_generate does, with the `extra`
    logits processors after the plan's; seeded first when sampling."""
    if seed is not None:
        torch.manual_seed(seed)
    ids, mask = pad_batch(PROMPTS, side="left")
    pixels, grid_thw = random_pixels(GRIDS, seed=11)
    kwargs = dict(dict(max_new_tokens=16, do_sample=False), **kwargs)
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        image_grid_thw=grid_thw,
        logits_processor=LogitsProcessorList([ForceAt(plan), no_early_stop(), *extra]),
        return_dict_in_generate=True,
        output_logits=True,
        **kwargs,
    )


def assert_same_generation(reference, other):
    assert torch.equal(reference.sequences, other.sequences)
    assert_same_latents(reference.latents, other.latents)
    seen, again = torch.stack(reference.logits, 1), torch.stack(other.logits, 1)
    assert (seen - again).abs().max().item() <= 1e-4


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_static_cache_equals_dynamic_cache(sampling):
    model = tiny_model(seed=1)
    options = dict(SAMPLING, seed=4) if sampling else {}
    dynamic = run(model, **options)
    static = run(model, cache_implementation="static", **options)
    assert_same_generation(dynamic, static)
    new = dynamic.sequences[:, -16:]
    assert [int((row == LSTART).sum()) for row in new] == [1, 1, 1, 2]  # blocks at different steps, two in row 3
    assert [len(v) for v in static.latents] == [int((row == LPAD).sum()) for row in static.sequences]


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_compiled_static_decoding_equals_dynamic_and_compiles_one_graph(sampling):
    model, backend = tiny_model(seed=1), CountingBackend()
    options = dict(SAMPLING, seed=4) if sampling else {}
    assert_same_generation(run(model, **options), run(model, **compiled(backend), **options))
    assert backend.graphs == 1  # every decoding step, latent or not, runs the one graph
    # blocks opening at other steps: same graph, no recompilation
    other = run(model, plan=PLAN_B, **compiled(backend), **options)
    assert_same_generation(run(model, plan=PLAN_B, **options), other)
    assert backend.graphs == 1


class EndAfter(LogitsProcessor):
    """Makes `<|latent_end|>` the model's clear favourite when row r's latest block holds `ends[r]` pads and clearly
    unwanted otherwise: the rules that let the model close a block (`predicted`, `official`) then close blocks of
    different lengths, below the cap."""

    def __init__(self, ends: list[int]):
        self.ends = torch.tensor(ends)

    def __call__(self, input_ids, scores):
        columns = torch.arange(input_ids.shape[1])
        last_start = torch.where(input_ids == LSTART, columns, -1).amax(dim=1, keepdim=True)  # (B, 1)
        pads = ((input_ids == LPAD) & (columns > last_start)).sum(dim=1)
        bias = torch.where(pads == self.ends, 50.0, -50.0)  # (B,): only the end's score moves
        return scores.index_add(1, torch.tensor([LEND]), bias[:, None])


@pytest.mark.parametrize(
    "rule, sampling", [("predicted", False), ("predicted", True), ("official", False), ("official", True)]
)
def test_end_rules_under_a_compiled_static_cache(rule, sampling):
    model, backend = tiny_model(seed=1, latent_end_rule=rule, latent_max_tokens=5), CountingBackend()
    options = dict(SAMPLING, seed=7) if sampling else {}
    extra = LogitsProcessorList([EndAfter([1, 2, 4, 2])])
    dynamic = run(model, extra=extra, **options)
    assert_same_generation(dynamic, run(model, extra=extra, **compiled(backend), **options))
    assert backend.graphs == 1
    # blocks closed where the model chose (2 and 4 pads; k is 3, the cap 5); row 0 opens its block at the last step
    assert [len(v) for v in dynamic.latents] == [0, 2, 4, 4]


def test_latent_source_under_a_compiled_static_cache():
    model, backend = tiny_model(seed=1), CountingBackend()

    def source(hidden, block, pad):  # something the model would never feed itself, per block and pad
        return torch.zeros_like(hidden) + (10 * block + pad)[:, None]

    dynamic = run(model, latent_source=source)
    static = run(model, latent_source=source, **compiled(backend))
    assert_same_generation(dynamic, static)
    assert not torch.equal(dynamic.sequences, run(model).sequences)  # the source changed what was generated
    fed = torch.cat(static.latents)
    assert fed.numel() and set(fed[:, 0].tolist()) <= {float(10 * b + p) for b in range(2) for p in range(3)}


def test_a_callers_compiled_forward_with_a_static_cache_equals_dynamic():
    model, backend = tiny_model(seed=1), CountingBackend()
    dynamic = run(model)
    model.forward = torch.compile(model.forward, backend=backend)  # what a caller does; prefill may break the graph
    first = run(model, cache_implementation="static")
    assert_same_generation(dynamic, first)
    graphs = backend.graphs
    assert graphs > 0
    second = run(model, plan=PLAN_B, cache_implementation="static")
    assert_same_generation(run(tiny_model(seed=1), plan=PLAN_B), second)
    assert backend.graphs == graphs  # nothing compiled again: no step of the second run recompiled


class HostReads(TorchDispatchMode):
    """Records the operators that read a tensor's value on the host, or copy a Python list to the device."""

    SUSPECT = ("_local_scalar_dense", "nonzero", "lift_fresh", "equal", "is_nonzero")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        moves = "_to_copy" in str(func) and kwargs.get("device", args[0].device) != args[0].device
        if moves or any(name in str(func) for name in self.SUSPECT):
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("rule", ["fixed", "predicted", "official"])
def test_latent_processors_never_read_the_device(rule):
    """On a device other than the CPU (here `meta`, which holds no values: a read would raise) the processors of a
    decoding step only queue device work."""
    model = tiny_model(seed=1, latent_end_rule=rule, latent_max_tokens=5)
    latent = model.latent_logits_processor()
    stages = [latent] + ([latent.late_stage(True)] if rule == "official" else [])
    ids = torch.tensor([[5, 6, LSTART, LPAD], [5, 6, 7, 8]], device="meta")
    scores = torch.empty(2, 128, device="meta")
    for stage in stages:  # first step: the processor builds its state and its id tensor
        scores = stage(ids, scores)
    for token in (LPAD, LEND, 9):  # later steps: one token longer each time
        ids = torch.cat([ids, torch.full((2, 1), token, device="meta")], dim=1)
        with HostReads() as reads:
            for stage in stages:
                scores = stage(ids, scores)
        assert reads.seen == [], (token, reads.seen)


def test_a_decoding_step_chooses_its_inputs_without_reading_the_device():
    """The step's inputs (token embedding or fed-back hidden state, per row) are chosen by device ops only."""
    model = tiny_model(seed=1)
    ids, mask = pad_batch([[5, 6, LSTART], [8, 9, 10, 11]], side="left")
    processors = LogitsProcessorList([ForceAt(PLAN), no_early_stop()])
    out = model.generate(
        input_ids=ids, attention_mask=mask, logits_processor=processors, max_new_tokens=2, do_sample=False
    )
    cache_ids = out[:, :-1]
    hidden = torch.randn(2, model.config.text_config.hidden_size)
    cache = _filled_cache(model, cache_ids)
    with HostReads() as reads:
        inputs = model.prepare_inputs_for_generation(
            cache_ids, next_sequence_length=1, cache=cache, latent_prev_hidden=hidden
        )
    assert reads.seen == [], reads.seen
    embeds = inputs["inputs_embeds"][:, 0]
    is_pad = cache_ids[:, -1] == LPAD
    assert is_pad.tolist() == [True, False]
    assert torch.equal(embeds[0], hidden[0])
    assert torch.equal(embeds[1], model.get_input_embeddings()(cache_ids[1, -1]))


def _filled_cache(model, ids):
    from transformers import StaticCache

    cache = StaticCache(config=model.config.text_config, max_cache_len=ids.shape[1] + 4)
    with torch.no_grad():
        model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
    return cache
