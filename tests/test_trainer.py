"""The batched trainer: its plain-SGD fast path must step exactly like torch.optim.SGD, and
each row draws its own site's batches."""

from __future__ import annotations

import torch

from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.trainer import BatchedTrainer, StackedData, TrainConfig


def _trainer(config: TrainConfig, seed: int = 0) -> BatchedTrainer:
    torch.manual_seed(1)
    model = build_model("mlp:8", 5, 2)
    x0 = FlatLayout.of(model).to_vector(model)
    params = x0.unsqueeze(0).repeat(4, 1).contiguous()
    gen = torch.Generator().manual_seed(2)
    parts = [(torch.randn(12, 5, generator=gen), torch.randint(0, 2, (12,), generator=gen))] * 4
    return BatchedTrainer(model, params, StackedData.from_parts(parts, torch.device("cpu")), config)


def test_plain_sgd_fast_path_matches_torch_optim() -> None:
    config = TrainConfig(optimizer="sgd", lr=0.2, batch_size=4, local_steps=3)
    fast, reference = _trainer(config), _trainer(config)
    assert fast._plain_sgd
    reference._plain_sgd = False
    reference._grad = torch.zeros_like(reference.params)
    reference.params.grad = reference._grad
    active = torch.tensor([True, False, True, True])
    for mask in (None, active):
        fast.train(mask)
        reference.train(mask)
    torch.testing.assert_close(fast.params, reference.params)


def test_inactive_rows_do_not_move() -> None:
    for config in (
        TrainConfig(optimizer="sgd", lr=0.2, batch_size=4),
        TrainConfig(optimizer="sgd", lr=0.2, momentum=0.9, batch_size=4),
        TrainConfig(optimizer="adam", lr=0.01, batch_size=4),
    ):
        trainer = _trainer(config)
        before = trainer.params.clone()
        trainer.train(torch.tensor([False, True, False, True]))
        assert torch.equal(trainer.params[0], before[0])
        assert torch.equal(trainer.params[2], before[2])
        assert not torch.equal(trainer.params[1], before[1])


def test_a_sites_batches_do_not_depend_on_who_else_is_sampled() -> None:
    """Row k of a many-row draw is what site k draws alone (a node), and the uniforms are
    uniform and unrelated across sites and draws."""
    from node.training.sampling import uniforms

    together = uniforms(7, torch.arange(16), 3, 64)
    alone = uniforms(7, torch.tensor([5]), 3, 64)
    assert torch.equal(together[5], alone[0])
    # A node's few values take a Python path, many sites a tensor one: the same numbers.
    crowd = uniforms(7, torch.arange(300), 3, 64, stream=1)
    for site in (0, 5, 299):
        assert torch.equal(crowd[site], uniforms(7, torch.tensor([site]), 3, 64, stream=1)[0])
    assert not torch.equal(together[4], together[5])
    assert not torch.equal(uniforms(7, torch.tensor([5]), 4, 64), alone)
    assert not torch.equal(uniforms(8, torch.tensor([5]), 3, 64), alone)
    many = uniforms(0, torch.arange(100), 0, 10_000).flatten()
    assert float(many.min()) >= 0.0 and float(many.max()) < 1.0
    deciles = torch.histc(many, bins=10, min=0.0, max=1.0) / len(many)
    assert float((deciles - 0.1).abs().max()) < 0.002
    pairs = torch.stack([many[:-1], many[1:]])
    assert abs(float(torch.corrcoef(pairs)[0, 1])) < 0.005
