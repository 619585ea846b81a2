"""EMA teacher: α schedule, parameter averaging, frozen grads, modes, checkpointing."""

import pytest
import torch
from torch import nn

from atp.adaptation import EMATeacher, ema_alpha


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize("step, alpha", [(0, 0.0), (1, 0.5), (2, 2 / 3), (999, 0.999), (1000, 0.999)])
def test_ema_alpha(step, alpha):
    assert ema_alpha(step) == pytest.approx(alpha)


def test_update_averages_parameters_but_not_buffers():
    student = small_net()
    teacher = EMATeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(7.0)
    teacher.update(student, 0)  # step 0 copies everything
    assert all(
        torch.equal(t, s) for t, s in zip(teacher.model.parameters(), student.parameters(), strict=True)
    )
    assert torch.equal(teacher.model[1].running_mean, student[1].running_mean)

    before = [p.clone() for p in teacher.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
        student[1].running_mean.fill_(-5.0)
    teacher.update(student, 1)  # α = 0.5
    for old, new, s in zip(before, teacher.model.parameters(), student.parameters(), strict=True):
        assert torch.allclose(new, 0.5 * old + 0.5 * s)
    assert torch.all(teacher.model[1].running_mean == 7.0)


def test_teacher_gets_no_gradient():
    student = small_net()
    teacher = EMATeacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 4, 4)
    out = teacher(x)
    assert not out.requires_grad
    (student(x).sum() + out.sum()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_teacher_forward_uses_batch_stats_without_dropout_and_restores_modes():
    student = small_net()
    teacher = EMATeacher(student)
    teacher.eval()
    with torch.no_grad():
        teacher.model[1].running_mean.fill_(100.0)  # would dominate the output in eval mode
    x = torch.randn(4, 3, 5, 5)
    first, second = teacher(x), teacher.predict(x)
    assert torch.equal(first, second)  # dropout is off

    conv, bn, _, head = teacher.model
    with torch.no_grad():
        h = conv(x)
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        normed = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(
            1, -1, 1, 1
        )
        expected = head(normed)
    assert torch.allclose(first, expected, atol=1e-5)
    assert not any(m.training for m in teacher.modules())
    teacher.train()
    with teacher.teacher_mode() as net:
        assert net[1].training and not net[2].training
    assert all(m.training for m in teacher.modules())


def test_predict_delegates_to_the_model_predict():
    class WithPredict(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.9)

        def forward(self, x):
            return self.drop(x)

        def predict(self, x, size):
            return nn.functional.interpolate(self.drop(x), size=size)

    teacher = EMATeacher(WithPredict())
    x = torch.ones(1, 1, 2, 2)
    assert torch.equal(teacher.predict(x, (4, 4)), torch.ones(1, 1, 4, 4))


class Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.student = small_net()
        self.teacher = EMATeacher(self.student)


def test_teacher_is_in_owner_state_dict_and_restores():
    owner = Owner()
    with torch.no_grad():
        for p in owner.teacher.parameters():
            p.normal_()
    state = owner.state_dict()
    assert "teacher.model.0.weight" in state and "teacher.model.1.running_var" in state
    restored = Owner()
    restored.load_state_dict(state)
    for a, b in zip(owner.teacher.state_dict().values(), restored.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_drop_path_is_disabled_for_smp_mix_transformer():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("mit_b0", weights=None, drop_path_rate=0.5)
    teacher = EMATeacher(encoder)
    encoder.train()
    teacher.train()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        student_runs = [encoder(x)[-1] for _ in range(2)]
    assert not torch.equal(*student_runs)  # drop path is active in the student
    teacher_runs = [teacher(x)[-1] for _ in range(2)]
    assert torch.equal(*teacher_runs)
    encoder.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(x)[-1], teacher_runs[0], atol=1e-5)  # no BN in MiT: eval == teacher
