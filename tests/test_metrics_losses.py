"""Metrics against scikit-learn and closed forms; losses' shapes and options."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn import metrics as sk

from mlrun.data.bundle import DataMeta
from mlrun.registry import losses, metrics
from tests.conftest import summary, tiny_config, train_run

META = DataMeta(task="classification", input_shape=(4,), num_classes=3)


def computed(name: str, outputs, targets, batches: int = 3, **settings) -> float:
    metric = metrics.build(name, META, **settings)
    metric.reset(torch.device("cpu"))
    for out, tgt in zip(outputs.chunk(batches), targets.chunk(batches)):
        metric.update(out, tgt)
    return metric.compute()


@pytest.fixture
def classified():
    torch.manual_seed(0)
    return torch.randn(90, 3), torch.randint(0, 3, (90,))


@pytest.mark.parametrize(
    "name, reference",
    [
        ("accuracy", sk.accuracy_score),
        ("f1", lambda t, p: sk.f1_score(t, p, average="macro")),
        ("precision", lambda t, p: sk.precision_score(t, p, average="macro", zero_division=0)),
        ("recall", lambda t, p: sk.recall_score(t, p, average="macro")),
    ],
)
def test_classification_metrics_match_sklearn(classified, name, reference):
    outputs, targets = classified
    assert computed(name, outputs, targets) == pytest.approx(reference(targets, outputs.argmax(1)))
    # A class neither among the targets nor predicted (predict on a file of two classes) does not count as a
    # failed class: a user trial's file of one class scored macro F1 0.321, where its two classes present give 0.482.
    outputs[:, 2], targets = -1e9, targets % 2
    assert computed(name, outputs, targets) == pytest.approx(reference(targets, outputs.argmax(1)))


def test_top_k_accuracy(classified):
    outputs, targets = classified
    expected = sk.top_k_accuracy_score(targets, outputs, k=2, labels=[0, 1, 2])
    assert computed("top_k_accuracy", outputs, targets, k=2) == pytest.approx(expected)


def test_regression_metrics_match_sklearn():
    torch.manual_seed(0)
    y = torch.randn(60, 1)
    pred = y + 0.3 * torch.randn(60, 1)
    assert computed("mae", pred, y) == pytest.approx(sk.mean_absolute_error(y, pred), rel=1e-5)
    assert computed("rmse", pred, y) == pytest.approx(math.sqrt(sk.mean_squared_error(y, pred)), rel=1e-5)
    assert computed("r2", pred, y) == pytest.approx(sk.r2_score(y, pred), rel=1e-5)


def test_perplexity_is_exp_of_token_cross_entropy():
    torch.manual_seed(0)
    logits, tokens = torch.randn(4, 8, 16), torch.randint(0, 16, (4, 8))
    expected = math.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens.reshape(-1)).item())
    assert computed("perplexity", logits, tokens, batches=2) == pytest.approx(expected, rel=1e-5)


def test_binary_single_logit_accuracy():
    outputs = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    assert computed("accuracy", outputs, torch.tensor([1, 0, 0, 0]), batches=1) == pytest.approx(0.75)


def test_cross_entropy_options_and_sequences():
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    smoothed = losses.build("cross_entropy", META, label_smoothing=0.1)(logits, targets)
    assert smoothed == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1))
    weighted = losses.build("cross_entropy", META, class_weights=[1.0, 2.0, 3.0])(logits, targets)
    ref = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0, 3.0]))
    assert weighted == pytest.approx(ref)
    seq = losses.build("cross_entropy", META)(torch.randn(2, 4, 3), torch.randint(0, 3, (2, 4)))
    assert seq.ndim == 0
    soft = losses.build("cross_entropy", META)(logits, torch.softmax(torch.randn(5, 3), 1))  # mixup-style targets
    assert soft.ndim == 0


def test_regression_losses_accept_flat_targets():
    pred, y = torch.zeros(4, 1), torch.tensor([1.0, -1.0, 2.0, 0.0])
    assert losses.build("mse", META)(pred, y) == pytest.approx(1.5)
    assert losses.build("l1", META)(pred, y) == pytest.approx(1.0)
    assert losses.build("huber", META, delta=1.0)(pred, y) == pytest.approx((0.5 + 0.5 + 1.5 + 0) / 4)
    assert losses.build("bce_with_logits", META)(torch.zeros(2, 1), torch.tensor([1, 0])) == pytest.approx(math.log(2))


def test_label_smoothing_changes_the_loss(tmp_path):
    def config(name: str, smoothing: float) -> dict:
        c = tiny_config(name=name, loss={"name": "cross_entropy", "label_smoothing": smoothing})
        c["train"] = {**c["train"], "epochs": 2}
        return c

    plain, smooth = train_run(tmp_path, config("plain", 0.0)), train_run(tmp_path, config("smooth", 0.3))
    # Smoothed targets keep a floor of entropy in the loss: the smoothed run ends with a higher loss.
    assert summary(smooth)["final"]["val/loss"] > summary(plain)["final"]["val/loss"] + 0.1


def test_distillation_soft_loss_at_t4_is_t_squared_kl_computed_by_hand():
    """Hinton et al.: T² · KL(softmax(teacher/T) || softmax(student/T)), averaged over samples. At T=1
    T and T² agree, so only a T > 1 catches a missing square."""
    from mlrun.objectives.distill import soft_loss

    student = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    teacher = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 2.5, 0.0]])
    t = 4.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) / sum(math.exp(w / t) for w in t_row) for v in t_row]
        q = [math.exp(v / t) / sum(math.exp(w / t) for w in s_row) for v in s_row]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = 16.0 * expected / len(student)
    assert soft_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)
