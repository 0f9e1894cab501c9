"""The ALT loss against a hand computation, and the collator's padding, positions and masking."""

from __future__ import annotations

import math

import pytest
import torch

from alt_engine.training.collator import IGNORE, AltCollator
from alt_engine.training.loss import alt_loss

# one sequence, T = 4, vocab 5; positions 2 and 3 are the response (labels), 0-1 prompt/feedback
LOGITS = [[0.0, 0.0, 0.0, 0.0, 0.0],
          [2.0, 0.5, -1.0, 0.0, 1.0],  # predicts token 2
          [0.3, -0.7, 1.2, 0.0, 2.5],  # predicts token 4
          [9.0, 9.0, 9.0, 9.0, 9.0]]  # predicts nothing (last position)
REF = [[1.0, 1.0, 1.0, 1.0, 1.0],
       [0.0, 1.0, 0.0, -2.0, 0.5],
       [1.5, 0.0, 0.2, 0.1, -1.0],
       [0.0, 0.0, 0.0, 0.0, 0.0]]
LABELS = [IGNORE, IGNORE, 2, 4]


def softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def by_hand(alpha: float, beta: float, reverse_kl: bool = False) -> float:
    """L = mean NLL + beta * mean KL(ref || p) - alpha * mean H(p), over the two scored positions."""
    nll = kl = h = 0.0
    for pos, target in ((1, 2), (2, 4)):
        p, q = softmax(LOGITS[pos]), softmax(REF[pos])
        nll += -math.log(p[target])
        h += -sum(pi * math.log(pi) for pi in p)
        first, second = (p, q) if reverse_kl else (q, p)
        kl += sum(a * math.log(a / b) for a, b in zip(first, second))
    return (nll + beta * kl - alpha * h) / 2


def run(alpha=0.0, beta=0.0, logits=LOGITS, labels=LABELS, ref=REF):
    loss, metrics = alt_loss(torch.tensor([logits]), torch.tensor([labels]), torch.tensor([ref]), alpha, beta)
    return loss.item(), metrics


def test_nll_entropy_kl_match_hand_computation():
    assert run()[0] == pytest.approx(by_hand(0, 0), abs=1e-5)
    assert run(alpha=0.06, beta=0.05)[0] == pytest.approx(by_hand(0.06, 0.05), abs=1e-5)
    _, m = run(alpha=0.06, beta=0.05)
    assert m["response_tokens"] == 2


def test_kl_direction_is_ref_to_policy():
    forward, reverse = by_hand(0, 1.0) - by_hand(0, 0), by_hand(0, 1.0, reverse_kl=True) - by_hand(0, 0)
    assert abs(forward - reverse) > 1e-2  # the two directions differ on this example...
    _, m = run(beta=1.0)
    assert m["kl"] == pytest.approx(forward, abs=1e-5)  # ...and the loss uses KL(p_ref || p_theta)
    assert m["kl"] != pytest.approx(reverse, abs=1e-3)


def test_entropy_bonus_lowers_the_loss():
    (plain, m), (bonus, _) = run(alpha=0.0), run(alpha=0.5)
    assert m["entropy"] > 0
    assert bonus < plain
    assert plain - bonus == pytest.approx(0.5 * m["entropy"], abs=1e-5)


def test_masked_positions_cannot_change_the_loss():
    changed = [list(row) for row in LOGITS]
    changed[0] = [100.0, -5.0, float("nan"), 3.0, 1.0]  # a prompt/feedback position
    changed[3] = [float("inf")] * 5  # the last position predicts nothing
    ref = [list(row) for row in REF]
    ref[0] = [float("nan")] * 5
    for alpha, beta in ((0.0, 0.0), (0.06, 0.05)):
        assert run(alpha, beta, logits=changed, ref=ref)[0] == pytest.approx(run(alpha, beta)[0], abs=1e-6)
    scored_changed = [list(row) for row in LOGITS]
    scored_changed[1][2] += 1.0  # a response position does count
    assert run(logits=scored_changed)[0] != pytest.approx(run()[0], abs=1e-3)


def test_mean_is_over_all_response_tokens_of_the_batch():
    # row 2 has three scored tokens, row 1 one: the loss is the mean over four tokens, not a mean of means
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, IGNORE, 3], [IGNORE, 1, 2, 6, IGNORE]])
    loss, m = alt_loss(logits, labels, alpha=0.0)
    logp = logits.log_softmax(-1)
    nlls = [-logp[0, 3, 3], -logp[1, 0, 1], -logp[1, 1, 2], -logp[1, 2, 6]]
    assert loss.item() == pytest.approx(sum(nlls).item() / 4, abs=1e-5)
    assert m["response_tokens"] == 4


def test_beta_needs_reference_logits():
    with pytest.raises(ValueError, match="ref_logits"):
        alt_loss(torch.zeros(1, 3, 5), torch.tensor([[IGNORE, 1, 2]]), None, beta=0.1)


PAD = 0
EXAMPLES = [  # feedback+sep+prompt, prompt only, response (+EOS)
    {"input_ids": [11, 12, 21, 22], "ref_input_ids": [21, 22], "response_ids": [31, 32, 99]},
    {"input_ids": [11, 12, 13, 21, 22, 23], "ref_input_ids": [21, 22, 23], "response_ids": [41, 99]},
]


def test_collator_left_pads_inputs_right_pads_targets():
    batch = AltCollator(pad_token_id=PAD)(EXAMPLES)
    assert "ref_input_ids" not in batch  # no reference view when beta == 0
    assert batch["input_ids"].tolist() == [[0, 0, 11, 12, 21, 22, 31, 32, 99],
                                           [11, 12, 13, 21, 22, 23, 41, 99, 0]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 0, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7, 7]]
    assert batch["labels"].tolist() == [[IGNORE] * 6 + [31, 32, 99], [IGNORE] * 6 + [41, 99, IGNORE]]


def test_collator_reference_view_aligns_response_columns():
    batch = AltCollator(pad_token_id=PAD, with_reference=True)(EXAMPLES)
    assert batch["ref_input_ids"].tolist() == [[0, 0, 0, 0, 21, 22, 31, 32, 99],
                                               [0, 0, 0, 21, 22, 23, 41, 99, 0]]
    assert batch["ref_position_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 1, 2, 3, 4, 4]]
    assert torch.equal(batch["ref_labels"], batch["labels"])  # same response tokens in the same columns
    scored = batch["labels"] != IGNORE
    assert torch.equal(batch["ref_input_ids"][scored], batch["input_ids"][scored])


def test_padding_does_not_change_a_real_models_loss(tiny_model_dir):
    """Batched (left/right padded, position ids from the mask) = token-weighted mean of unpadded examples."""
    from alt_engine.modeling import load_model

    model = load_model(tiny_model_dir, device="cpu")
    examples = [{"input_ids": [5, 6, 7, 8, 9, 10, 11], "ref_input_ids": [9, 10, 11], "response_ids": [40, 41, 42]},
                {"input_ids": [5, 6, 12], "ref_input_ids": [12], "response_ids": [50, 51, 52, 53, 54, 55]}]
    collate = AltCollator(pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        batch = collate(examples)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        together, _ = alt_loss(logits, batch["labels"], alpha=0.0)
        total = 0.0
        for ex in examples:
            one = collate([ex])
            loss, m = alt_loss(model(input_ids=one["input_ids"]).logits, one["labels"], alpha=0.0)
            total += loss.item() * m["response_tokens"]
    assert together.item() == pytest.approx(total / 9, abs=1e-4)


def test_trainer_projects_only_response_columns_and_gets_the_same_loss(tiny_model_dir):
    """AltTrainer keeps only the response span of the logits (responses share columns): same loss, less work."""
    from alt_engine.modeling import load_model
    from alt_engine.training.trainer import AltTrainer

    model = load_model(tiny_model_dir, device="cpu")
    batch = AltCollator(pad_token_id=model.config.pad_token_id)(
        [{"input_ids": [5, 6, 7, 8, 9], "ref_input_ids": [9], "response_ids": [40, 41]},
         {"input_ids": [5, 6, 12], "ref_input_ids": [12], "response_ids": [50, 51, 52, 53]}])
    keep = AltTrainer._response_span(batch["labels"])
    assert keep == 4 + 1  # the longest response + the last input column, which predicts its first token
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"]).logits
        part = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], logits_to_keep=keep).logits
    assert part.shape[1] == keep
    expected, _ = alt_loss(full, batch["labels"], alpha=0.06)
    got, _ = alt_loss(part, batch["labels"][:, -keep:], alpha=0.06)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
