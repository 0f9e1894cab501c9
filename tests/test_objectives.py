"""The objectives registry and each objective's own pieces against hand computations on a tiny vocabulary:
configs (TrainingArguments subclasses, ALT's defaults unchanged), Quark's token initialisation and
conditioning, SteerLM's attribute string, CUT's token selection / unlikelihood term / MLE-UL split, CnR's
target layout."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import HfArgumentParser, TrainingArguments

from alt_engine import conditioning
from alt_engine.pool import PoolItem
from alt_engine.training import objectives
from alt_engine.training.collator import IGNORE
from alt_engine.training.config import AltTrainConfig

# --------------------------------------------------------------------------- configs and registry


def test_bf16_auto_leaves_tiny_models_and_opt_outs_in_float32(tiny_model_dir):
    from transformers import AutoConfig

    from alt_engine.training.run import _precision

    class Model:  # _precision reads only the width
        config = AutoConfig.from_pretrained(tiny_model_dir)

    assert Model.config.hidden_size < 256 and _precision(AltTrainConfig(), Model) == {}
    Model.config.hidden_size = 576  # the default model's width: bf16 only where measured faster, never if opted out
    assert _precision(AltTrainConfig(bf16_auto=False), Model) == {}
    assert _precision(AltTrainConfig(deepspeed="zero2", num_procs=2), Model) == {}  # launched ranks: as given


def test_alt_config_is_training_arguments_with_alt_defaults():
    c = AltTrainConfig()
    assert isinstance(c, TrainingArguments)
    assert (c.learning_rate, c.num_train_epochs, c.warmup_steps, c.lr_scheduler_type.value, c.weight_decay,
            c.max_grad_norm, c.per_device_train_batch_size, c.gradient_accumulation_steps, c.max_steps, c.seed,
            c.bf16, c.gradient_checkpointing) == (5e-5, 4.0, 0.05, "linear", 0.0, 1.0, 8, 1, -1, 0, False, False)
    assert (c.max_prompt_tokens, c.max_response_tokens, c.lora, c.lora_r, c.lora_alpha, c.lora_dropout,
            c.lora_target_modules, c.merge_lora) == (512, 256, False, 16, 32, 0.05, "all-linear", False)
    assert (c.alpha, c.beta, c.logging_steps, c.save_steps, c.report_to, c.resume) == \
        (0.06, None, 1, 0, ["tensorboard"], False)
    assert (c.num_procs, c.launcher, c.num_machines, c.machine_rank, c.main_process_ip, c.main_process_port) == \
        (1, "deepspeed", 1, 0, "127.0.0.1", 0)
    assert c.save_strategy.value == "epoch" and c.distributed_state is None  # a description: no device set up


def test_aliases_fold_into_training_arguments_fields():
    c = AltTrainConfig(epochs=3, batch_size=4, grad_accum=2, warmup_ratio=0.1)
    assert (c.num_train_epochs, c.per_device_train_batch_size, c.gradient_accumulation_steps, c.warmup_steps) == \
        (3, 4, 2, 0.1)
    assert c.epochs is None and c.to_dict() == {"num_train_epochs": 3, "per_device_train_batch_size": 4,
                                                "gradient_accumulation_steps": 2, "warmup_steps": 0.1}
    with pytest.raises(ValueError, match="batch_size"):
        AltTrainConfig(batch_size=0)


@pytest.mark.parametrize("name", ["alt", "quark", "steerlm", "sft", "cut", "cnr"])
def test_every_objective_config_round_trips(name):
    cls = objectives.get(name).config
    assert issubclass(cls, TrainingArguments) and cls.objective == name
    config = objectives.make_config(name, learning_rate=1e-3, epochs=1, report_to="none")
    again = objectives.make_config(name, **config.to_dict())
    assert again == config and again.learning_rate == 1e-3


def test_cut_defaults_follow_the_published_code():
    c = objectives.make_config("cut")
    assert (c.ul_threshold, c.ul_weight, c.positive_ratio, c.learning_rate, c.lr_scheduler_type.value,
            c.num_train_epochs, c.lora, c.lora_r, c.merge_lora) == (1.1, 1.0, 0.25, 4e-4, "cosine", 1.0, True, 16, True)
    assert c.target_modules == ["gate_proj", "up_proj", "down_proj"]


def test_options_of_another_objective_are_refused():
    parser = HfArgumentParser(objectives.options_dataclass())
    args = vars(parser.parse_args(["--ul_threshold", "1.2", "--epochs", "1"]))
    cut = objectives.config_from_options("cut", args)
    assert cut.ul_threshold == 1.2 and cut.num_train_epochs == 1
    with pytest.raises(ValueError, match="--ul_threshold"):
        objectives.config_from_options("alt", args)
    assert objectives.make_config("sft", alpha=0.1).objective == "sft"  # comparison: ALT-only options left out
    with pytest.raises(TypeError, match="nonsense"):
        objectives.make_config("alt", nonsense=1)
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.get("ppo")


# --------------------------------------------------------------------------- Quark


def test_quark_rows_drawn_from_mean_and_std_of_existing_rows(tiny_model_dir):
    from alt_engine.modeling import load_model, load_tokenizer
    from alt_engine.training.quark import add_control_tokens, control_tokens
    from alt_engine.training.run import grow_embeddings

    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, device="cpu")
    before = model.get_input_embeddings().weight.detach().clone()  # (V, H)
    tokens = control_tokens(["Excellent", "Good", "Horrible"])
    assert tokens == {"Excellent": "<|quantile_0|>", "Good": "<|quantile_1|>", "Horrible": "<|quantile_2|>"}
    assert add_control_tokens(tokenizer, tokens) == 3 and add_control_tokens(tokenizer, tokens) == 0
    assert grow_embeddings(model, tokenizer, seed=7) == 3
    after = model.get_input_embeddings().weight.detach()
    v, h = before.shape
    assert after.shape == (v + 3, h) and torch.equal(after[:v], before)  # old rows untouched
    # by hand: per dimension, mean and (unbiased) std over the V old rows, then mean + std * N(0, 1)
    mean = [sum(before[r, d].item() for r in range(v)) / v for d in range(h)]
    std = [math.sqrt(sum((before[r, d].item() - mean[d]) ** 2 for r in range(v)) / (v - 1)) for d in range(h)]
    noise = torch.randn(3, h, generator=torch.Generator().manual_seed(7))
    expected = torch.tensor([[mean[d] + std[d] * noise[i, d].item() for d in range(h)] for i in range(3)])
    assert torch.allclose(after[v:], expected, atol=1e-5)
    assert torch.equal(model.get_output_embeddings().weight[v:], after[v:])  # tied head: same rows


def test_quark_conditions_on_one_control_token(tiny_model_dir):
    from alt_engine.modeling import load_tokenizer
    from alt_engine.training.quark import QuarkTrainConfig, with_tokens

    tokenizer = load_tokenizer(tiny_model_dir)
    items = [PoolItem(i, i, 0, "Say hi.", fb, "hi", False, fb) for i, fb in enumerate(["Excellent", "Horrible"])]
    fmt = with_tokens(tokenizer, items, QuarkTrainConfig(), conditioning.Format())
    assert fmt.placement == "tokens" and fmt.tokens == {"Excellent": "<|quantile_0|>", "Horrible": "<|quantile_1|>"}
    best = conditioning.build_input(tokenizer, "Say hi.", "Excellent", fmt)
    token_id = tokenizer.convert_tokens_to_ids("<|quantile_0|>")
    assert best.input_ids == [token_id] + conditioning.prompt_ids(tokenizer, "Say hi.")
    assert (best.start, best.end) == (0, 1) and best.prompt_ids == conditioning.prompt_ids(tokenizer, "Say hi.")
    worst = conditioning.build_input(tokenizer, "Say hi.", "Horrible", fmt)
    assert worst.input_ids[0] == tokenizer.convert_tokens_to_ids("<|quantile_1|>") != token_id
    assert tokenizer.decode(best.input_ids, skip_special_tokens=True).count("quantile") == 0  # never shown


def test_quark_requantizes_the_accumulated_pool():
    from alt_engine.training.objectives import get
    from alt_engine.training.quark import quark_items, requantize

    cats = ["Excellent", "Good", "Horrible"]
    # two rounds binned on their own (round 1 scores 1-3, round 2 scores 7-9): each has its own "Excellent"
    r1 = [PoolItem(i, i, i, "Q", cats[2 - i], "a", False, cats[2 - i], float(i + 1)) for i in range(3)]
    r2 = [PoolItem(10 + i, 10 + i, i, "Q", cats[2 - i], "b", False, cats[2 - i], float(i + 7)) for i in range(3)]
    pool = requantize(r1 + r2, cats)
    # by hand over all six scores (1, 2, 3, 7, 8, 9), 2 per bin: 9, 8 best; 7, 3 middle; 2, 1 worst
    assert {it.score: it.category for it in pool} == {9.0: "Excellent", 8.0: "Excellent", 7.0: "Good",
                                                      3.0: "Good", 2.0: "Horrible", 1.0: "Horrible"}
    assert all(it.feedback == it.category for it in pool)  # the control token follows the pool's quantile
    unscored = [PoolItem(0, 0, 0, "Q", "Good", "a", False, "Good")]  # a rule's labels: left as they are
    assert requantize(unscored, cats) == unscored
    assert get("quark").items is quark_items and get("quark").pool_policy == "accumulate"


def test_quark_samples_on_the_best_token_with_its_siblings_masked(tiny_model_dir, db):
    from sqlmodel import select

    from alt_engine.db import Generation, Prompt, session_scope
    from alt_engine.modeling import load_model, load_tokenizer
    from alt_engine.sampling import SamplingParams, TransformersBackend, sample_prompts
    from alt_engine.tasks import get_or_create_task
    from alt_engine.training.quark import add_control_tokens, control_tokens
    from alt_engine.training.run import grow_embeddings

    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, device="cpu")
    fmt = conditioning.Format("tokens", tokens=control_tokens(["Excellent", "Good", "Horrible"]))
    add_control_tokens(tokenizer, fmt.tokens)
    grow_embeddings(model, tokenizer)
    ids = conditioning.control_token_ids(tokenizer, fmt)
    assert ids == sorted(tokenizer.convert_tokens_to_ids(t) for t in fmt.tokens.values())
    siblings = ids[1:]  # the best token's siblings: a model that wants to write them
    model.lm_head.register_forward_hook(lambda module, inputs, out: out.index_add(
        -1, torch.tensor(siblings), torch.full((*out.shape[:-1], len(siblings)), 8.0)))
    backend = TransformersBackend(model, tokenizer)
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        s.add_all(Prompt(task_id=task.id, text=f"Question {i}?") for i in range(3))
    with session_scope(db) as s:
        prompts = list(s.exec(select(Prompt)))

    def sampled(mask: bool) -> list[list[int]]:
        """Sample through the stage (stored), and return the token ids the same params produce."""
        params = SamplingParams(n=4, max_new_tokens=6, seed=3, mask_control_tokens=mask)
        gen_ids = sample_prompts(db, backend, prompts, params, conditioning_text="Excellent", fmt=fmt,
                                 show_progress=False)
        with session_scope(db) as s:
            stored = [g.sampling_params for g in s.exec(select(Generation).where(Generation.id.in_(gen_ids)))]
        assert all(sp.get("suppress_tokens", []) == (ids if mask else []) for sp in stored)  # from the format
        inputs = [conditioning.build_input(tokenizer, p.text, "Excellent", fmt).input_ids for p in prompts]
        assert all(x[0] == ids[0] for x in inputs)  # conditioned on the best token
        resolved = SamplingParams(**{k: v for k, v in stored[0].items() if k in SamplingParams.__dataclass_fields__})
        return [x.token_ids for row in backend.generate(inputs, resolved) for x in row]

    free = sampled(mask=False)
    assert sum(t in siblings for seq in free for t in seq) > len(free)  # unmasked: the siblings come out
    masked = sampled(mask=True)
    assert not any(t in ids for seq in masked for t in seq)  # masked: never a control token


# --------------------------------------------------------------------------- SteerLM


def test_steerlm_attribute_string(tiny_tokenizer):
    from alt_engine.db import Task
    from alt_engine.training.steerlm import attribute_string, default_attributes, steerlm_format

    cats = ["Harmless and very helpful", "Harmless and helpful", "Harmful"]
    assert default_attributes(cats) == {cats[0]: "quality:2", cats[1]: "quality:1", cats[2]: "quality:0"}
    mapping = {cats[0]: "harmful:0,helpful:2", cats[1]: "harmful:0,helpful:1", cats[2]: "harmful:1,helpful:0"}
    task = Task(name="hh", categories=cats, conditioning={"placement": "system", "attributes": mapping})
    fmt = steerlm_format(task)
    assert attribute_string(fmt, cats[0]) == "harmful:0,helpful:2"
    cond = conditioning.build_input(tiny_tokenizer, "Help me.", cats[0], fmt)
    assert tiny_tokenizer.decode(cond.input_ids[cond.start:cond.end]) == "Feedback: harmful:0,helpful:2"
    assert steerlm_format(Task(name="t", categories=cats)).attributes == default_attributes(cats)


# --------------------------------------------------------------------------- CUT

V = 3
# one negative row and one positive row, T = 4: positions 2, 3 are the response (labels); logits at t predict t+1
COND = [[[0.0, 0.0, 0.0], [0.2, 2.0, -1.0], [1.0, 0.0, 0.5], [9.0, 9.0, 9.0]],  # (x, j): y_2 = 1 made likelier
        [[0.0, 0.0, 0.0], [0.5, 0.1, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]]  # positive: same as its x view
UNCOND = [[[0.0, 0.0, 0.0], [0.2, 0.5, -1.0], [1.0, 0.0, 0.9], [9.0, 9.0, 9.0]],
          [[0.0, 0.0, 0.0], [0.5, 0.1, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]]
LABELS = [[IGNORE, IGNORE, 1, 2], [IGNORE, IGNORE, 0, 1]]


def p(row, token):
    z = sum(math.exp(v) for v in row)
    return math.exp(row[token]) / z


def cut_by_hand(threshold: float, weight: float) -> tuple[float, list[bool]]:
    """(likelihood over every row's first view + the negative's x → y part) / 2, as the published code."""
    likelihood, x_part, selected = [], [], []
    for b, negative in ((0, True), (1, False)):
        for pos, target in ((1, LABELS[b][2]), (2, LABELS[b][3])):
            first = p(COND[b][pos], target)  # (x, j) for the negative, x for the positive
            likelihood.append(-math.log(first))
            if negative:
                px = p(UNCOND[b][pos], target)
                hit = first / px > threshold
                selected.append(hit)
                x_part.append(-weight * math.log(1 - px) if hit else -math.log(px))
    return (sum(likelihood) / len(likelihood) + sum(x_part) / len(x_part)) / 2, selected


def run_cut(threshold=1.1, weight=1.0, cond=COND):
    from alt_engine.training.cut import cut_loss

    logits = torch.tensor(cond, requires_grad=True)
    loss, m = cut_loss(logits, torch.tensor(UNCOND), torch.tensor(LABELS), torch.tensor([True, False]),
                       threshold, weight)
    return loss, m, logits


def test_cut_selects_tokens_by_the_ratio_threshold():
    expected, selected = cut_by_hand(1.1, 1.0)
    assert selected == [True, False]  # the judgment raised p(y_2) (ratio 2.6); p(y_3) fell (ratio 0.9)
    loss, m, _ = run_cut(1.1, 1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert m["ul_share"] == 0.5 and m["negatives"] == 1 and m["response_tokens"] == 4
    none_loss, none_m, _ = run_cut(threshold=100.0)  # no token passes: the x → y part is all MLE
    assert none_m["ul_share"] == 0 and none_loss.item() == pytest.approx(cut_by_hand(100.0, 1.0)[0], abs=1e-5)
    all_loss, all_m, _ = run_cut(threshold=0.01)  # every negative token passes
    assert all_m["ul_share"] == 1 and all_loss.item() == pytest.approx(cut_by_hand(0.01, 1.0)[0], abs=1e-5)


def test_cut_unlikelihood_term_and_weight():
    px = p(UNCOND[0][1], 1)
    loss1, m, _ = run_cut(weight=1.0)
    loss2, _, _ = run_cut(weight=0.5)
    assert m["ul"] == pytest.approx(-math.log(1 - px), abs=1e-5)
    # the UL token is one of the negative's 2 tokens in the x → y mean, which is half the loss
    assert loss1.item() - loss2.item() == pytest.approx(0.5 * -math.log(1 - px) / 2 / 2, abs=1e-5)
    assert loss2.item() == pytest.approx(cut_by_hand(1.1, 0.5)[0], abs=1e-5)


def test_cut_gradient_reaches_the_first_views_only_through_their_mle():
    loss, _, logits = run_cut()
    loss.backward()
    cond_grad = logits.grad.clone()
    # by hand: d/dlogits of (mean NLL over the 4 first-view tokens) / 2 = (softmax - onehot) / 8 per token —
    # the negative's (x, j) view and the positive's x view alike; no gradient through the ratio
    for b in (0, 1):
        for pos, target in ((1, LABELS[b][2]), (2, LABELS[b][3])):
            probs = torch.tensor(COND[b][pos]).softmax(-1)
            onehot = torch.nn.functional.one_hot(torch.tensor(target), V).float()
            assert torch.allclose(cond_grad[b, pos], (probs - onehot) / 8, atol=1e-6)
    assert torch.count_nonzero(cond_grad[:, [0, 3]]) == 0  # nor prompt positions / the last one


def test_cut_unlikelihood_part_sees_the_negatives_x_view_only():
    from alt_engine.training.cut import cut_loss

    uncond = torch.tensor(UNCOND, requires_grad=True)
    loss, m = cut_loss(torch.tensor(COND), uncond, torch.tensor(LABELS), torch.tensor([True, False]))
    loss.backward()
    assert torch.count_nonzero(uncond.grad[1]) == 0  # the positive's x view: already its first view
    # the selected token (y = 1): d/dz_k -log(1 - p_1) = p_1 (onehot_1 - p)_k / (1 - p_1), / 2 tokens / 2 parts
    px = torch.tensor(UNCOND[0][1]).softmax(-1)
    expected = px[1] * (torch.nn.functional.one_hot(torch.tensor(1), V) - px) / (1 - px[1]) / 4
    assert torch.allclose(uncond.grad[0, 1], expected, atol=1e-6)
    assert uncond.grad[0, 1, 1] > 0  # descending the gradient lowers p(y_t | x) of the blamed token
    # a batch of positives only: plain MLE on y | x
    only_pos, m_pos = cut_loss(torch.tensor(COND), torch.tensor(UNCOND), torch.tensor(LABELS),
                               torch.tensor([False, False]))
    by_hand = -sum(math.log(p(COND[b][pos], LABELS[b][pos + 1])) for b in (0, 1) for pos in (1, 2)) / 4
    assert only_pos.item() == pytest.approx(by_hand, abs=1e-5) and "ul_share" not in m_pos


def test_cut_examples_split_views_and_downsample_positives(tiny_tokenizer):
    from alt_engine.training.cut import CutTrainConfig, build_cut_examples

    negs = [PoolItem(i, i, i, f"Q{i}", "It is in lowercase.", "hello there", False, negative=True) for i in range(8)]
    poss = [PoolItem(10 + i, 10 + i, i, f"Q{i}", "Excellent", "HELLO THERE", False, "Excellent") for i in range(8)]
    rows = build_cut_examples(tiny_tokenizer, negs + poss, CutTrainConfig(report_to="none"))
    neg_rows, pos_rows = [r for r in rows if r["negative"]], [r for r in rows if not r["negative"]]
    assert len(neg_rows) == 8 and len(pos_rows) == 2  # ceil(0.25 x 8)
    r = neg_rows[0]
    assert r["ref_input_ids"] == conditioning.prompt_ids(tiny_tokenizer, "Q0")  # x alone
    assert r["input_ids"] != r["ref_input_ids"] and "Judgment: It is in lowercase." in tiny_tokenizer.decode(
        r["input_ids"])
    assert all(p["input_ids"] == p["ref_input_ids"] for p in pos_rows)  # positives: x → y only
    assert r["response_ids"][-1] == tiny_tokenizer.eos_token_id


# --------------------------------------------------------------------------- Critique-and-Revise


def test_cnr_target_layout(tiny_tokenizer):
    from alt_engine.conditioning import REQUEST, parse_revision
    from alt_engine.training.cnr import CnRTrainConfig, build_cnr_examples

    item = PoolItem(1, 1, 1, "Say hello.", "It is in lowercase.", "hello there", False, revision="HELLO THERE")
    (row,) = build_cnr_examples(tiny_tokenizer, [item], CnRTrainConfig(report_to="none"))
    chat = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": REQUEST}]
    assert row["input_ids"] == conditioning.prompt_ids(tiny_tokenizer, chat)
    assert tiny_tokenizer.decode(row["input_ids"]).endswith(
        "<|im_start|>assistant\nhello there<|im_end|>\n<|im_start|>user\n" + REQUEST +
        "<|im_end|>\n<|im_start|>assistant\n")
    assert row["response_ids"][-1] == tiny_tokenizer.eos_token_id
    target = tiny_tokenizer.decode(row["response_ids"][:-1])
    assert target == "Critique: It is in lowercase.\nRevision: HELLO THERE"
    assert parse_revision(target) == ("It is in lowercase.", "HELLO THERE")
    assert parse_revision("Critique: fine") == ("fine", None)
