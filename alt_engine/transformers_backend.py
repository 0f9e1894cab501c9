"""The in-process sampling backend: a decode loop over a transformers model's forward pass.

Rows join and leave the batch (``kv_cache``), every sample draws from its own random stream
(``sequence_seed``), and feedback guidance decodes a twin row per sample (``guided_logits``).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache

from . import modeling
from .backend_types import OnStep, Sample, SamplingParams, Throughput, report
from .kv_cache import HEADROOM, SlotLayer, merge_layers


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def sequence_seed(seed: int, i: int, j: int) -> int:
    """The seed of sample ``j`` of input ``i``: a 63-bit mix of ``seed + i`` and ``j``.

    ``seed + i``, so a caller that splits its inputs into calls with ``seed + offset`` (``sample_prompts``)
    gets the same samples however it splits them.
    """
    x = ((seed + i) * 0x9E3779B97F4A7C15 + j * 0x94D049BB133111EB + 1) & (2**64 - 1)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64 finaliser
        x = ((x ^ (x >> shift)) * mult) & (2**64 - 1)
    return (x ^ (x >> 31)) >> 1


def guided_logits(cond: torch.Tensor, neg: torch.Tensor, gamma: float) -> torch.Tensor:
    """Feedback guidance (classifier-free guidance over the feedback): ``lp(f) + γ·(lp(f) − lp(f⁻))``.

    ``cond``: logits [rows, vocab] of the inputs conditioned on the feedback f; ``neg``: logits [rows, vocab] of
    the same rows' twins, conditioned on f⁻ (the worst feedback, the plain prompt or any text) with the same
    tokens generated so far. Combined as log-probabilities (each row's log-softmax; a per-row constant, so the
    distribution is that of the raw logits, but bounded), clamped so no ``-inf − -inf`` appears; γ = 0 returns
    ``cond``'s log-probabilities (the same distribution as plain sampling). Returns [rows, vocab], fed to the
    same temperature and nucleus as plain logits. The only place the two conditionings meet.
    """
    lp_c = torch.log_softmax(cond.float(), -1).clamp(min=-1e4)  # [rows, vocab]
    if gamma == 0:
        return lp_c
    lp_n = torch.log_softmax(neg.float(), -1).clamp(min=-1e4)  # [rows, vocab]
    return lp_c + gamma * (lp_c - lp_n)  # [rows, vocab]


def next_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row from ``logits`` [rows, vocab]: greedy, or temperature + nucleus (top-p) sampling.

    Sampling inverts the nucleus's CDF at one uniform per row (``uniforms`` [rows]), so a row's token
    depends only on its own logits and its own random stream, not on its batch-mates. The nucleus is
    transformers' ``TopPLogitsWarper``'s (the most likely tokens whose probability before them is < top_p),
    found among the top 64 (then 512, 4096, all) candidates instead of sorting the whole vocabulary.
    """
    logits = logits.float()
    if params.temperature == 0:
        return logits.max(-1).indices
    logits = logits / params.temperature
    rows, vocab = logits.shape
    if params.top_p >= 1:  # the whole distribution, in vocabulary order
        cum = torch.softmax(logits, -1).cumsum(-1)
        return torch.searchsorted(cum, (uniforms * cum[:, -1]).unsqueeze(-1)).squeeze(-1).clamp_(max=vocab - 1)
    log_z = torch.logsumexp(logits, -1, keepdim=True)
    out = torch.empty(rows, dtype=torch.long)
    todo = torch.arange(rows)
    k = min(64, vocab)
    while len(todo):
        top, idx = logits[todo].topk(k, -1)  # [r, k], most likely first
        p = (top - log_z[todo]).exp()
        cum = p.cumsum(-1)
        found = (cum[:, -1] >= params.top_p) if k < vocab else torch.ones(len(todo), dtype=torch.bool)
        p = p.masked_fill((cum - p) >= params.top_p, 0.0)[found]  # outside the nucleus
        kept = p.cumsum(-1)
        pick = (kept < (uniforms[todo[found]] * kept[:, -1]).unsqueeze(-1)).sum(-1).clamp_(max=k - 1)
        out[todo[found]] = idx[found].gather(-1, pick.unsqueeze(-1)).squeeze(-1)
        todo, k = todo[~found], min(vocab, k * 8)
    return out


# An automatic batch holds at most this many tokens (rows × (longest input + its new tokens)): its KV cache
# (~3 GB in float32 for the default model, half in bfloat16) stays bounded when contexts are long. Without
# it a Critique-and-Revise evaluation (128 rows of ~800 tokens, caches copied as rows come and go) grew a
# process to 12.8 GB and the kernel killed it. Short samples are unaffected (128 × 210 tokens).
KV_TOKEN_BUDGET = 65536


@dataclass
class _Row:
    """One sequence being decoded. ``length``: its tokens so far; all but the last are in the KV cache."""

    i: int  # input index
    j: int  # sample index
    seed: int
    generator: torch.Generator
    length: int
    tokens: list[int]  # generated
    done: bool = False
    # feedback guidance: a sample's row and its twin (the input under f⁻, fed the same tokens) point at each
    # other; the twin (``negative``) draws nothing and yields no sample
    twin: _Row | None = field(default=None, repr=False)
    negative: bool = False


@dataclass
class _Batch:
    """The rows decoding together: their cache, attention mask [rows, capacity] and last tokens [rows, 1]."""

    rows: list[_Row]
    cache: Cache
    mask: torch.Tensor
    last: torch.Tensor
    width: int  # columns of the cache in use


class TransformersBackend:
    """A decode loop over the model's forward pass with a KV cache whose rows come and go.

    Sequences are taken longest prompt first (similar lengths share a batch: little padding). Up to
    ``batch_size`` rows decode together; rows that stopped (EOS or ``max_new_tokens``) leave the batch and
    waiting sequences are prefilled into it, so short answers do not wait for long ones. The KV cache
    lives in preallocated buffers (``SlotLayer``) written in place.

    Each sample draws from its own random stream (``sequence_seed(params.seed, i, j)``) and its token is
    picked from its own logits, so for a fixed seed a sample is the same whatever the batch size or the
    other inputs of the call — up to float rounding, which can differ with the batch's shape.

    ``dtype``: the weights to sample with (``None``: the model's). Another dtype keeps a converted copy of
    the model for sampling; bfloat16 on a CPU with AMX multiplies several times faster than float32
    (``modeling.fastest_dtype`` measures it); its samples are statistically equivalent, not identical.
    ``threads``: torch threads while generating (0: leave as is; ``"auto"``: ``modeling.choose_threads``).
    ``batch_size``: rows when ``params.batch_size`` is 0 (``None``: ``modeling.auto_batch_size``); such an
    automatic batch also holds at most ``KV_TOKEN_BUDGET`` tokens.

    ``on_step(rows, tokens)``, when given, is called after every decoding step with the (input, sample)
    pairs of the rows that produced a token and those tokens (a row's stop token included): streaming.

    For a model server (``serving.ModelServer``), per input: ``limits[i]`` new tokens at most and its own seed
    ``seeds[i]`` (input i's samples are then what it gets alone with ``seed=seeds[i]``; the default,
    ``params.seed + i``, is the usual stream); ``on_sample(i, j, sample)`` hears of each sample as its row
    stops, not when the call ends; ``admit(free)``, asked between steps while fewer than ``batch_size`` rows
    run, returns up to ``free`` more inputs ``(ids, limit, seed)`` that join the running batch (continuous
    batching: a request that arrives while others decode starts at the next step, not after them).
    """

    name = "transformers"
    supports_admit = True  # ``generate(..., admit=...)``: requests join a running batch (ModelServer)

    def __init__(self, model, tokenizer, dtype: torch.dtype | None = None, threads: int | str = 0,
                 batch_size: int | None = None):
        if dtype is not None and dtype != model.dtype:
            model = copy.deepcopy(model).to(dtype)
        self.model, self.tokenizer, self.threads = model, tokenizer, threads
        self.batch_size = batch_size
        self.dtype = model.dtype
        self.stop_ids = _stop_ids(model, tokenizer)
        self.layers = model.config.get_text_config().num_hidden_layers
        self.lock = threading.Lock()  # one generate at a time on the shared model

    @torch.inference_mode()
    def generate(self, inputs, params, progress=None, on_step: OnStep | None = None,
                 index: Sequence[int] | None = None, *, limits: Sequence[int] | None = None,
                 seeds: Sequence[int] | None = None,
                 admit: Callable[[int], list[tuple]] | None = None,
                 on_sample: Callable[[int, int, Sample], None] | None = None,
                 negatives: Sequence[list[int] | None] | None = None):
        """``index``: per input, the input index whose random streams it draws from (default: its own), so
        inputs may share streams (the same probe prompt under two conditionings: common random numbers).

        ``negatives``: per input, the ids of the same prompt under f⁻ (None: that input is not guided), used when
        ``params.guidance`` > 0 — each guided sample decodes with a twin row under f⁻ in the same batched forward
        (its own KV cache; the batch's rows count both) and draws its tokens from ``guided_logits``. ``admit``
        may then return ``(ids, limit, seed, negative ids or None)``."""
        inputs = list(inputs)  # admitted inputs are appended
        if params.guidance and negatives is None:
            raise ValueError("feedback guidance needs the inputs under the negative feedback (negatives)")
        negatives = list(negatives) if negatives is not None else [None] * len(inputs)
        if len(negatives) != len(inputs):
            raise ValueError("one negative input (or None) per input")
        limits = list(limits) if limits is not None else [params.max_new_tokens] * len(inputs)
        if seeds is None:  # input i draws sample j from sequence_seed(params.seed, index[i], j)
            seeds = [params.seed + k for k in (index if index is not None else range(len(inputs)))]
        seeds = list(seeds)
        jobs = sorted(((i, j) for i in range(len(inputs)) for j in range(params.n)),
                      key=lambda ij: -len(inputs[ij[0]]))  # longest first: similar lengths together
        pending = jobs[::-1]  # pop() takes the next
        out: list[list[Sample | None]] = [[None] * params.n for _ in inputs]
        meter, done, reported = Throughput(), 0, 0.0
        batch: _Batch | None = None
        size = params.batch_size or self.auto_batch_size()
        if not params.batch_size and inputs:  # automatic: bounded in tokens too
            longest = max(len(x) + limit for x, limit in zip([*inputs, *filter(None, negatives)], [*limits, *(
                limit for x, limit in zip(negatives, limits) if x)]))
            size = max(1, min(size, KV_TOKEN_BUDGET // longest))
        refill = max(1, size // 8)  # prefill when this many slots are free: fewer, larger prefills

        def guided(i: int) -> bool:
            return bool(params.guidance) and negatives[i] is not None

        threads = self.threads
        if threads == "auto":
            threads = modeling.choose_threads()
        with self.lock, using_threads(threads):
            while True:
                alive = sum(not r.done for r in batch.rows) if batch else 0
                if admit is not None and alive + len(pending) < size:  # newcomers join the running batch
                    for ids, limit, seed, *neg in admit(size - alive - len(pending)):
                        inputs.append(ids)
                        limits.append(limit)
                        seeds.append(seed)
                        negatives.append(neg[0] if neg else None)
                        out.append([None] * params.n)
                        jobs += [(len(inputs) - 1, j) for j in range(params.n)]
                        pending[:0] = [(len(inputs) - 1, j) for j in reversed(range(params.n))]  # after the waiting
                if not (pending or batch):
                    break
                dead = len(batch.rows) - alive if batch else 0
                free = size - alive
                if (pending and free >= min(refill, len(pending))) or (not pending and dead >= max(1, alive // 4)):
                    admitted = []  # a guided sample takes two rows
                    while pending and (not (alive or admitted) or free >= 1 + guided(pending[-1][0])):
                        free -= 1 + guided(pending[-1][0])
                        admitted.append(pending.pop())
                    batch = self._rebuild(batch, inputs, params, admitted, meter, on_step, seeds, negatives)
                else:
                    self._step(batch, params, meter, on_step)
                done += self._finish(batch, inputs, limits, out, on_sample) if batch else 0
                now = time.perf_counter()
                if progress and now - reported > 1.0 and done < len(jobs):
                    reported = now
                    report(progress, done, len(jobs), meter.info(done, len(jobs)))
        report(progress, len(jobs), len(jobs), meter.info(len(jobs), len(jobs)))
        return out  # type: ignore[return-value]

    def auto_batch_size(self) -> int:
        if self.batch_size is None:
            self.batch_size = modeling.auto_batch_size(self.dtype, self.model.device.type)
        return self.batch_size

    def _step(self, batch: _Batch, params, meter, on_step) -> None:
        """One decoding step for every row of the batch."""
        if batch.mask.shape[1] <= batch.width:
            batch.mask = torch.nn.functional.pad(batch.mask, (0, HEADROOM))
        batch.mask[:, batch.width] = 1
        batch.width += 1
        positions = torch.tensor([[r.length - 1] for r in batch.rows], device=self.model.device)
        logits = self.model(input_ids=batch.last, attention_mask=batch.mask[:, :batch.width],
                            position_ids=positions, cache=batch.cache, use_cache=True).logits[:, -1]
        batch.last = self._sample(logits, batch.rows, params, meter, on_step)

    def _rebuild(self, batch, inputs, params, admitted, meter, on_step, seeds, negatives) -> _Batch | None:
        """The batch without its finished rows, with ``admitted`` (i, j) jobs prefilled into it."""
        sources, rows, last = [], [], []  # sources: (cache, row indices, columns in use)
        if batch and (alive := [k for k, r in enumerate(batch.rows) if not r.done]):
            keep = torch.tensor(alive)
            rows += [batch.rows[k] for k in alive]
            sources.append((batch.cache, keep, max(batch.rows[k].length for k in alive) - 1))
            last.append(batch.last[keep])
        if admitted:
            cache, fresh, first = self._prefill(inputs, params, admitted, meter, on_step, seeds, negatives)
            rows += fresh
            sources.append((cache, torch.arange(len(fresh)), cache.layers[0].length))
            last.append(first)
        if not rows:
            return None
        width = max(cols for _, _, cols in sources)
        cache = Cache(layers=[merge_layers([(c.layers[k], idx, cols) for c, idx, cols in sources], width)
                              for k in range(self.layers)])
        mask = torch.zeros(len(rows), width + HEADROOM, dtype=torch.long, device=self.model.device)
        for k, row in enumerate(rows):
            mask[k, width - (row.length - 1):width] = 1
        return _Batch(rows, cache, mask, torch.cat(last), width)

    def _prefill(self, inputs, params, admitted, meter, on_step, seeds,
                 negatives) -> tuple[Cache, list[_Row], torch.Tensor]:
        """The prompts of ``admitted`` (i, j) jobs through the model: their cache, rows and first tokens.

        A guided job adds its twin: the input under f⁻, prefilled in the same forward (rows after the samples')."""
        device = self.model.device
        twins = [(i, j) for i, j in admitted if params.guidance and negatives[i] is not None]
        seqs = [inputs[i] for i, _ in admitted] + [negatives[i] for i, _ in twins]
        lengths = [len(x) for x in seqs]
        width = max(lengths)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, x in enumerate(seqs):  # left padding
            ids[k, width - lengths[k]:] = torch.tensor(x)
            mask[k, width - lengths[k]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = Cache(layers=[SlotLayer() for _ in range(self.layers)])
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                            cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        rows, by_job = [], {}
        for (i, j), n in zip(admitted, lengths):
            seed = sequence_seed(seeds[i], 0, j)  # = sequence_seed(params.seed, index[i], j) by default
            rows.append(_Row(i, j, seed, torch.Generator().manual_seed(seed), n, []))
            by_job[i, j] = rows[-1]
        for (i, j), n in zip(twins, lengths[len(admitted):]):
            twin = _Row(i, j, by_job[i, j].seed, by_job[i, j].generator, n, [], twin=by_job[i, j], negative=True)
            by_job[i, j].twin = twin
            rows.append(twin)
        return cache, rows, self._sample(logits, rows, params, meter, on_step)

    def _sample(self, logits, rows, params, meter, on_step=None) -> torch.Tensor:
        """Each row's next token, appended to its tokens; returned as the next input [rows, 1].

        A guided sample's token comes from ``guided_logits`` of its row and its twin's; the twin is fed it too."""
        at = {id(r): k for k, r in enumerate(rows)}
        own = [k for k, r in enumerate(rows) if not r.negative]  # rows that draw a token
        if len(own) < len(rows):
            cond = logits[own]  # [samples, vocab]
            pairs = [(n, at[id(rows[k].twin)]) for n, k in enumerate(own) if rows[k].twin is not None]
            which = torch.tensor([n for n, _ in pairs], device=logits.device)
            cond = cond.float().index_copy(0, which, guided_logits(
                cond[which], logits[torch.tensor([m for _, m in pairs], device=logits.device)], params.guidance))
            logits = cond
        if params.suppress_tokens:
            logits = logits.index_fill(-1, torch.tensor(params.suppress_tokens, device=logits.device), float("-inf"))
        uniforms = torch.cat([torch.rand(1, generator=rows[k].generator) for k in own])
        chosen = next_tokens(logits.cpu(), params, uniforms).tolist()  # [samples]
        token_of = {id(rows[k]): t for k, t in zip(own, chosen)}
        live = []
        for row in rows:
            token = token_of[id(row.twin if row.negative else row)]
            if not row.done:
                row.tokens.append(token)
                row.length += 1
                if not row.negative:
                    meter.tokens += 1
                    live.append(row)
            token_of.setdefault(id(row), token)
        if on_step and live:
            on_step([(r.i, r.j) for r in live], [r.tokens[-1] for r in live])
        return torch.tensor([[token_of[id(r)]] for r in rows], device=self.model.device)

    def _finish(self, batch, inputs, limits, out, on_sample=None) -> int:
        """Mark the rows that stopped and store their samples; returns how many stopped now."""
        finished = 0
        for row in batch.rows:
            if row.done or row.negative:  # a twin stops with its sample
                continue
            stopped = row.tokens[-1] in self.stop_ids
            if stopped or len(row.tokens) >= limits[row.i]:
                row.done, finished = True, finished + 1
                if row.twin is not None:
                    row.twin.done = True
                kept = row.tokens[:-1] if stopped else row.tokens
                out[row.i][row.j] = Sample(kept, self.tokenizer.decode(kept, skip_special_tokens=True),
                                           not stopped, len(inputs[row.i]), row.seed)
                if on_sample is not None:
                    on_sample(row.i, row.j, out[row.i][row.j])
        return finished


@contextmanager
def using_threads(threads: int):
    """torch's intra-op threads set to ``threads`` (0: unchanged) for the block."""
    old = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
