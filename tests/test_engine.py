"""The multi-model engine: same models as the plain loop, deterministic, validated inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from builders.engine import TaskTensors, TrainSpec, _FirstConv, split_by_steps, train_models, train_plain


def _task(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable synthetic images: class c is a noisy patch of brightness (c + 1) / k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    x[:, :, 6:22, 6:22] += ((y.float() + 1) / k).view(n, 1, 1, 1)
    return x, y


@pytest.fixture(scope="module")
def data() -> dict[str, TaskTensors]:
    out = {}
    for i, (name, k) in enumerate((("a", 3), ("b", 5))):
        x, y = _task(k, 256, i)
        xt, yt = _task(k, 128, 10 + i)
        out[name] = TaskTensors(x, y, xt, yt, k)
    return out


def _specs(arch: str, kwargs: dict, n: int = 6, bs: int = 32) -> list[TrainSpec]:
    return [
        TrainSpec(
            f"m{i}",
            "ab"[i % 2],
            arch,
            dict(kwargs, num_classes=3 if i % 2 == 0 else 5),
            seed=i,
            lr=0.003 if i % 3 == 0 else 0.05,
            weight_decay=1e-4 * i,
            batch_size=bs,
            optimizer="adam" if i % 3 == 0 else "sgd",
            epochs=1 + i % 3,
        )  # fmt: skip
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("arch", "kwargs", "tol", "workers"),
    [("cnn3", {}, 1e-5, 1), ("cnn3", {"strides": [2, 2, 2]}, 1e-5, 1), ("cnn3", {}, 1e-5, 2),
     ("resnet_tiny", {}, 1e-2, 1), ("resnet_tiny", {}, 1e-2, 2)],  # fmt: skip
)
def test_engine_matches_plain_loop(data, arch: str, kwargs: dict, tol: float, workers: int) -> None:
    specs = _specs(arch, kwargs, n=6 if arch == "cnn3" else 3)
    if arch != "cnn3":
        # vmap sums in another order than the plain module; Adam turns rounding noise in the
        # near-zero gradients of timm's zero-initialized residual BN into full-size steps, so
        # Adam models are compared by accuracy and loss, SGD models also by parameters
        specs = [dataclasses.replace(s, epochs=1) for s in specs]
    threads = torch.get_num_threads()
    engine = train_models(specs, data, progress=False, workers=workers)
    assert torch.get_num_threads() == threads  # worker threads give the thread count back
    for spec, res in zip(specs, engine):
        ref = train_plain(spec, data[spec.task_id])
        assert res.spec == spec and res.steps == ref.steps == spec.epochs * (256 // 32)
        assert res.final.keys() == ref.final.keys()
        for key, tensor in ref.final.items():
            assert res.final[key].shape == tensor.shape, key  # padded heads are cut back
            if arch != "cnn3" and spec.optimizer == "adam":
                continue  # see above: compared by accuracy and loss only
            # float sums run in another order in the stacked kernels: compare relative norms
            gap = float((res.final[key].double() - tensor.double()).norm())
            assert gap <= tol * float(tensor.double().norm()) + (1e-6 if arch == "cnn3" else 1e-3), (key, gap)
        for key, tensor in ref.init.items():
            assert torch.equal(res.init[key], tensor)
        assert abs(res.test_accuracy - ref.test_accuracy) <= 0.01
        assert abs(res.train_loss - ref.train_loss) < (1e-3 if arch == "cnn3" else 0.05)


def test_engine_learns_and_flags(data) -> None:
    specs = [
        TrainSpec("good", "b", "cnn3", {"num_classes": 5}, 0, 0.02, 1e-4, 32, "adam", 10),
        TrainSpec("idle", "b", "cnn3", {"num_classes": 5}, 1, 1e-7, 0.0, 32, "sgd", 1),
    ]
    good, idle = train_models(specs, data, progress=False)
    assert good.test_accuracy > 0.8 and not good.below_chance
    assert 0.15 < good.chance < 0.35
    assert idle.below_chance  # an untrained model is flagged
    assert not torch.equal(good.init["conv1.weight"], good.final["conv1.weight"])


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_is_deterministic(data, workers: int) -> None:
    specs = _specs("cnn3", {}, n=4)
    a = train_models(specs, data, progress=False, workers=workers)
    b = train_models(specs, data, progress=False, workers=workers)
    for ra, rb in zip(a, b):
        assert all(torch.equal(ra.final[k], rb.final[k]) for k in ra.final)
        assert ra.test_accuracy == rb.test_accuracy


def test_workers_get_stacks_of_equal_steps(data) -> None:
    specs = _specs("cnn3", {}, n=7)  # 1, 2, 3, 1, 2, 3, 1 epochs of 8 steps
    assert split_by_steps(specs, data, 1) == [list(range(7))]
    parts = split_by_steps(specs, data, 2)
    assert sorted(i for p in parts for i in p) == list(range(7))
    assert sorted(sum(specs[i].epochs for i in p) for p in parts) == [6, 7]
    assert split_by_steps(specs, data, 2) == parts  # the same stacks every time
    assert len(split_by_steps(specs[:2], data, 8)) == 2  # never an empty stack
    with pytest.raises(ValueError, match="workers must be at least 1"):
        train_models(specs, data, progress=False, workers=-1)


def test_a_failing_stack_stops_the_others(data, monkeypatch) -> None:
    import builders.engine as engine

    specs = [TrainSpec("short", "a", "cnn3", {"num_classes": 3}, 0, 0.01, 0.0, 32, "sgd", 1),
             TrainSpec("long", "b", "cnn3", {"num_classes": 5}, 1, 0.01, 0.0, 32, "sgd", 30)]  # fmt: skip
    steps = {"short": 0, "long": 0}
    step = engine._Stack.step

    def failing_step(self, step_no, lr_factor):
        name = self.specs[0].model_id
        steps[name] += 1
        if name == "short" and step_no == 3:
            raise RuntimeError("boom")
        return step(self, step_no, lr_factor)

    monkeypatch.setattr(engine._Stack, "step", failing_step)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        train_models(specs, data, progress=False, workers=2)
    assert steps["long"] < 30 * 8 // 2  # stopped early, not trained to the end
    assert torch.get_num_threads() == threads


def test_progress_counts_model_steps_and_models(data, capsys) -> None:
    specs = _specs("cnn3", {}, n=3)  # 8, 16 and 24 steps
    train_models(specs, data, progress=True, workers=2)
    err = capsys.readouterr().err
    assert "engine cnn3×3" in err and "/48" in err  # model-steps of all stacks
    assert "models_done=3/3" in err


def test_fine_tuning_starts_from_given_weights(data) -> None:
    src = train_models(_specs("cnn3", {}, n=1), data, progress=False)[0]
    spec = TrainSpec("ft", "b", "cnn3", {"num_classes": 5}, 3, 0.01, 0.0, 32, "adam", 1)
    res = train_models([spec], data, progress=False, inits={"ft": src.final})[0]
    assert torch.equal(res.init["conv2.weight"], src.final["conv2.weight"])
    assert res.init["head.weight"].shape == (5, 16)  # a fresh head of the target's size


def test_engine_validates_its_group(data) -> None:
    specs = _specs("cnn3", {}, n=2)
    mixed = [specs[0], TrainSpec("x", "a", "cnn3", {"num_classes": 3}, 0, 0.1, 0.0, 64, "sgd", 1)]
    with pytest.raises(ValueError, match="batch size"):
        train_models(mixed, data, progress=False)
    other = TrainSpec("y", "a", "resnet_tiny", {"num_classes": 3}, 0, 0.1, 0.0, 32, "sgd", 1)
    with pytest.raises(ValueError, match="architecture"):
        train_models([specs[0], other], data, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        TrainSpec("z", "a", "cnn3", {"num_classes": 3}, 0, 0.1, 0.0, 32, "lbfgs", 1)
    for layers in ({"conv": "nsl_full"}, {"downsample": "shape_adaptor"}):
        odd = TrainSpec("v", "a", "cnn3", {"num_classes": 3, **layers}, 0, 0.1, 0.0, 32, "sgd", 1)
        with pytest.raises(ValueError, match="model v: the engine trains cnn3 with plain strided"):
            train_models([odd], data, progress=False)
    with pytest.raises(KeyError, match="task 'zz'"):
        train_models([TrainSpec("w", "zz", "cnn3", {"num_classes": 3}, 0, 0.1, 0.0, 32, "sgd", 1)],
                     data, progress=False)  # fmt: skip


@pytest.mark.parametrize(("channels", "stride", "size"), [(1, 2, (28, 28)), (3, 1, (9, 7)), (3, 2, (9, 7))])
def test_stacked_first_conv_matches_per_model_conv(channels: int, stride: int, size: tuple) -> None:
    """The engine's im2col first layer gives each model's own conv2d output and gradients."""
    g = torch.Generator().manual_seed(0)
    m, b, o = 3, 4, 5
    x = torch.randn(m, b, channels, *size, generator=g)
    w = torch.randn(m, o, channels, 3, 3, generator=g).requires_grad_()
    bias = torch.randn(m, o, generator=g).requires_grad_()
    out = _FirstConv.apply(x, w, bias, stride)  # (B, M*O, Ho, Wo)
    refs = [F.conv2d(x[i], w[i], bias[i], stride=stride, padding=1) for i in range(m)]
    assert out.shape == (b, m * o, *refs[0].shape[2:])
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.cat(refs, 1), rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=g)
    grad_w, grad_b = torch.autograd.grad((out * upstream).sum(), (w, bias))
    ref_w, ref_b = torch.autograd.grad((torch.cat(refs, 1) * upstream).sum(), (w, bias))
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_b, ref_b, rtol=1e-4, atol=1e-4)
