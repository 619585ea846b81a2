"""An independent re-computation of one training step of each stage, written from the spec (issue #24).

Nothing here calls a stage's helpers or ``atp.adaptation.losses``: every loss, mask, weight and detach point,
the EMA rule, the schedule and the AdamW step are written out below from spec §4–§8 (and, for the baselines,
from the stage docstrings). Three pieces are reused, each pinned on its own: the network (the thing being
trained, not a rule under test), ``StrongAugment`` (tests/adaptation/test_augment.py; re-created here from
the stage options and driven by a generator seeded as the stages seed theirs) and ``classmix_masks``
(tests/adaptation/test_mix_and_crop.py; the mask only, drawn from the reference's own easy labels; mixing images,
labels and weights is written out here).

The network runs in float32 as in training; the reference evaluates every loss in float64 from its logits.

``StepRecorder`` is the callback that records what the real stage did in each step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn

from atp.adaptation import StrongAugment, classmix_masks
from atp.data.transforms import MEAN, STD

IGNORE = 255

# ---------------------------------------------------------------- what the stage did


@dataclass
class StepRecord:
    """One training step of the real stage."""

    student_before: dict[str, torch.Tensor]
    teacher_before: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None] = field(default_factory=dict)  # just before the optimiser step
    student_after: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_after: dict[str, torch.Tensor] = field(default_factory=dict)
    prototypes_after: dict[str, torch.Tensor] = field(default_factory=dict)
    backward: list[torch.Tensor] = field(default_factory=list)  # each loss given to manual_backward, in order
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # what the step passed to log_terms


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


class StepRecorder(Callback):
    """Records every training step; wraps (and still calls) the module's ``manual_backward`` and ``log_terms``."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []

    def setup(self, trainer, module, stage: str) -> None:
        backward, log_terms = module.manual_backward, module.log_terms

        def recording_backward(loss, *args, **kwargs):
            self.steps[-1].backward.append(loss.detach().clone())
            return backward(loss, *args, **kwargs)

        def recording_log_terms(terms):
            self.steps[-1].terms.update({k: torch.as_tensor(v).detach().clone() for k, v in terms.items()})
            return log_terms(terms)

        module.manual_backward, module.log_terms = recording_backward, recording_log_terms

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.steps:  # nothing runs between two steps: the state after one is the state before the next
            last = self.steps[-1]
            self.steps.append(StepRecord(last.student_after, last.teacher_after))
        else:
            self.steps.append(StepRecord(_state(module.student), _state(module.teacher.model)))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.steps[-1].grads = {n: None if p.grad is None else p.grad.detach().clone()
                                for n, p in module.student.named_parameters()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        record = self.steps[-1]
        record.student_after, record.teacher_after = _state(module.student), _state(module.teacher.model)
        if hasattr(module, "prototypes"):
            record.prototypes_after = _state(module.prototypes)


# ---------------------------------------------------------------- what the reference expects


@dataclass
class Expected:
    """One step as the spec computes it."""

    terms: dict[str, torch.Tensor]  # the logged terms
    backward: list[torch.Tensor]  # each loss back-propagated on its own, in order (spec §4.1, §8.2)
    grads: dict[str, torch.Tensor | None]  # None: not trainable, or reached by no loss
    student_buffers: dict[str, torch.Tensor]  # BatchNorm statistics after the step's forward passes
    teacher_after: dict[str, torch.Tensor]  # the teacher's parameters (EMA) and buffers after the step
    prototypes: torch.Tensor | None = None  # class means after the step (Propagate)
    seen: torch.Tensor | None = None  # whether each class has had a prototype sample (Propagate)
    notes: dict[str, bool] = field(default_factory=dict)  # preconditions: the step exercises every rule


class Networks:
    """The reference's student and teacher: two copies of the architecture that take each step's recorded state."""

    def __init__(self, model: nn.Module) -> None:
        self.student, self.teacher = copy.deepcopy(model), copy.deepcopy(model)
        self.param_names = {n for n, _ in model.named_parameters()}

    def load(self, role: str, state: dict[str, torch.Tensor], trainable: set[str] = frozenset()) -> nn.Module:
        """The student in train mode, ``trainable`` requiring grad; the teacher with BN in train mode (batch
        statistics), dropout off and no gradient (spec §4.2)."""
        net = getattr(self, role)
        net.load_state_dict(state)
        net.train()
        for name, param in net.named_parameters():
            param.requires_grad_(role == "student" and name in trainable)
        if role == "teacher":
            for module in net.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.eval()
        return net


@dataclass
class Context:
    """What a reference step needs: the networks, the stage options, the step and its inputs."""

    nets: Networks
    options: dict  # cfg.stage.module, plain
    seed: int
    num_classes: int
    step: int
    student_state: dict[str, torch.Tensor]
    teacher_state: dict[str, torch.Tensor]
    batch: dict[str, Any]

    def strong_augment(self) -> tuple[StrongAugment, Any, torch.Generator]:
        """A(·) from the stage options and the step's one decision draw; the stages seed the generator of a step
        from (seed, global_step) (spec §4.4: one draw per iteration, shared by every stream)."""
        aug = StrongAugment(mean=MEAN, std=STD, **self.options["strong_aug"])
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step))
        return aug, aug.draw(generator), generator

    def teacher(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The teacher of this step: EMA-updated from the student at the start of every step t >= 1 (spec §4.2)."""
        state = self.teacher_state
        if self.step > 0:
            state = ema_teacher(state, self.student_state, self.nets.param_names, self.step, self.options["ema_alpha"])
        return self.nets.load("teacher", state), state


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in net.named_buffers()}


def up(logits: torch.Tensor, size) -> torch.Tensor:
    """Logits at 1/4 bilinearly upsampled to the image size (align_corners False, spec §4.3), then float64."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False).double()


@dataclass
class TeacherLabels:
    labels: torch.Tensor  # arg-max of the teacher's probabilities at input resolution
    confidence: torch.Tensor  # their max
    probs: torch.Tensor
    quality: torch.Tensor  # q: share of the batch's pixels with confidence >= threshold (spec §4.3)


def teacher_labels(teacher: nn.Module, images: torch.Tensor, conf_threshold: float) -> TeacherLabels:
    with torch.no_grad():
        probs = up(teacher(images), images.shape[-2:]).softmax(1)
    confidence, labels = probs.max(1)
    return TeacherLabels(labels, confidence, probs, (confidence >= conf_threshold).double().mean())


# ---- losses, written out (spec §5.2, §6.2, §8.4, #5, #6, #19; TENT; SHOT-IM)


def pixel_ce_mean(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i w_i·(−log p_i[y_i]) over non-ignored pixels, divided by ALL pixels (mmseg mean, spec #19)."""
    valid = labels != IGNORE
    picked = logits.log_softmax(1).gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    per_pixel = -picked * valid
    if weights is not None:
        per_pixel = per_pixel * weights
    return per_pixel.sum() / labels.numel()


def negative_term(probs: torch.Tensor, mask_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """L_npl = mean_i −log clamp(1 − Σ_{c: q_ic < τ} p_ic, 1e-8, 1), q detached, every pixel counted (§6.2, #6)."""
    negatives = (mask_probs.detach() < tau).to(probs.dtype)
    return -(1.0 - (probs * negatives).sum(1)).clamp(1e-8, 1.0).log().mean()


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.log()).sum(1) / math.log(probs.shape[1])


def entropy_nats(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.log()).sum(1)


def ratio_pooled(labels: torch.Tensor, num_classes: int, factor: int, min_ratio: float) -> torch.Tensor:
    """Labels at 1/factor (spec §8.3): one-hot with ignore as an extra class, average-pooled; the arg-max class
    where it covers >= min_ratio of the cell and is not the ignore class, else ignore."""
    slots = torch.where(labels == IGNORE, num_classes, labels)
    one_hot = F.one_hot(slots, num_classes + 1).permute(0, 3, 1, 2).double()
    share, winner = F.avg_pool2d(one_hot, factor).max(1)
    return torch.where((winner == num_classes) | (share < min_ratio), IGNORE, winner)


def prototype_contrast(feats: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, temperature: float,
                       reg_weight: float) -> torch.Tensor:
    """L_scl (spec §8.4): CE of softmax_c(z·μ_c/τ) over valid pixels + reg_weight·Σ_c log softmax_c(z̄·μ_c/τ)/(C log C)."""
    num_classes, dim = means.shape
    z = feats.permute(0, 2, 3, 1).reshape(-1, dim)
    y = labels.reshape(-1)
    valid = y != IGNORE
    z_valid, y_valid = z[valid], y[valid]
    proto_ce = -(z_valid @ means.t() / temperature).log_softmax(1).gather(1, y_valid[:, None]).mean()
    reg = (z_valid.mean(0) @ means.t() / temperature).log_softmax(0).sum() / (num_classes * math.log(num_classes))
    return proto_ce + reg_weight * reg


# ---- optimiser, schedule, EMA (spec §4.1, §4.2)


def lr_factor(step: int, sched: dict) -> float:
    """Poly(power) to 0 over max_steps, times the linear warm-up from warmup_ratio over the first warmup_steps."""
    factor = (1.0 - min(step, sched["max_steps"]) / sched["max_steps"]) ** sched["poly_power"]
    if step < sched["warmup_steps"]:
        factor *= 1.0 - (1.0 - step / sched["warmup_steps"]) * (1.0 - sched["warmup_ratio"])
    return factor


class AdamWReference:
    """AdamW (decoupled decay) written out, in float64, with the spec §4.1 groups: a name with ``head`` gets
    lr × head_lr_mult; otherwise a name with ``norm`` gets weight decay × norm_decay_mult. A parameter without a
    gradient is skipped (no decay, no state); each parameter counts its own steps for the bias corrections."""

    def __init__(self, optim: dict, eps: float = 1e-8) -> None:
        self.cfg, self.eps = optim, eps
        self.state: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def group(self, name: str) -> tuple[float, float]:
        lr, wd = self.cfg["lr"], self.cfg["weight_decay"]
        if "head" in name:
            return lr * self.cfg["head_lr_mult"], wd
        if "norm" in name:
            return lr, wd * self.cfg["norm_decay_mult"]
        return lr, wd

    def step(self, name: str, param: torch.Tensor, grad: torch.Tensor, factor: float) -> torch.Tensor:
        beta1, beta2 = self.cfg["betas"]
        param, grad = param.double(), grad.double()
        count, m, v = self.state.get(name, (0, torch.zeros_like(param), torch.zeros_like(param)))
        count, m, v = count + 1, beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad * grad
        self.state[name] = (count, m, v)
        base_lr, wd = self.group(name)
        lr = base_lr * factor
        m_hat, v_hat = m / (1 - beta1**count), v / (1 - beta2**count)
        return param * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + self.eps)


def ema_teacher(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], param_names: set[str],
                step: int, max_alpha: float) -> dict[str, torch.Tensor]:
    """θ' ← α_t θ' + (1 − α_t) θ on parameters only, α_t = min(1 − 1/(t+1), max_alpha); buffers kept (§4.2)."""
    alpha = min(1.0 - 1.0 / (step + 1), max_alpha)
    return {n: alpha * t + (1 - alpha) * student[n] if n in param_names else t for n, t in teacher.items()}


# ---------------------------------------------------------------- one step per stage


def trainable_names(stage: str, model: nn.Module, options: dict) -> set[str]:
    """The parameters a stage trains: all, except for TENT (only the weight and bias of the encoder's and the
    decoder's norm layers) and SHOT (not the classifier, or not the decoder; never the projection head)."""
    names = {n for n, _ in model.named_parameters()}
    if stage == "tent":
        norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
        return {f"{part}.{m}.{p}" for part in ("encoder", "decode_head")
                for m, module in getattr(model, part).named_modules() if isinstance(module, norms)
                for p, _ in module.named_parameters(recurse=False)}
    if stage == "shot":
        frozen = "decode_head." if options["freeze"] == "decoder" else "decode_head.conv_seg."
        return {n for n in names if not n.startswith((frozen, "proj_head."))}
    return names


def _recipe(options: dict, **values: Any) -> None:
    """The reference covers the paper recipe of a stage: fail loudly if the test config leaves it."""
    for key, value in values.items():
        got = options
        for part in key.split("__"):
            got = got[part]
        assert got == value, f"the reference assumes stage.module.{key.replace('__', '.')}={value}, got {got}"


def _grads(loss: torch.Tensor, net: nn.Module) -> dict[str, torch.Tensor | None]:
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    values = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    grads: dict[str, torch.Tensor | None] = {n: None for n, _ in net.named_parameters()}
    grads.update({n: g for (n, _), g in zip(named, values, strict=True)})
    return grads


def align_step(ctx: Context, trainable: set[str]) -> Expected:
    """Spec §5.2/§5.4: L_A = λ_cel·mean((1−H)^γ·H) − λ_div·Ĥ(m) on the student's prediction of A(x). Inputs are
    at crop size, so the teacher is neither updated nor run."""
    o = ctx.options
    _recipe(o, freeze_decoder=False)
    images = ctx.batch["img"]
    aug, params, generator = ctx.strong_augment()
    strong = aug.apply(images, params, generator)
    student = ctx.nets.load("student", ctx.student_state, trainable)
    probs = up(student(strong), strong.shape[-2:]).softmax(1)
    entropy = normalised_entropy(probs)
    cel = ((1 - entropy) ** o["cel_gamma"] * entropy).mean()
    weights = torch.exp(-o["div_alpha"] * entropy).detach()
    mass = (probs * weights[:, None]).sum((0, 2, 3)) / entropy.numel()  # m_c, not renormalised by Σw
    div = (mass * mass.log()).sum() / math.log(ctx.num_classes)  # −Ĥ(m)
    total = o["cel_weight"] * cel + o["div_weight"] * div
    return Expected({"loss/cel": cel, "loss/div": div, "loss/total": total}, [total], _grads(total, student),
                    buffers(student), ctx.teacher_state, notes={"the strong view differs": not torch.equal(strong, images)})


def teach_step(ctx: Context, trainable: set[str]) -> Expected:
    """Spec §6.2/§6.3: EMA update; teacher arg-max on the weak view; L_ppl + L_npl on the student's A(x), the
    negative classes those under τ_n in the student's own detached probabilities or, with neg_source=teacher,
    in the teacher's."""
    o = ctx.options
    _recipe(o, pos_threshold=None, pos_class_keep=None, class_balance__power=0.0, prior_correction__strength=0.0,
            teacher_bn_train=True)
    teacher, teacher_state = ctx.teacher()
    weak = ctx.batch["img"]
    pseudo = teacher_labels(teacher, weak, o["conf_threshold"])
    aug, params, generator = ctx.strong_augment()
    strong = aug.apply(weak, params, generator)
    student = ctx.nets.load("student", ctx.student_state, trainable)
    logits = up(student(strong), strong.shape[-2:])
    probs = logits.softmax(1)
    positive = pixel_ce_mean(logits, pseudo.labels)
    mask_probs = pseudo.probs if o["neg_source"] == "teacher" else probs.detach()
    negative = negative_term(probs, mask_probs, o["neg_threshold"])
    loss = o["pos_weight"] * positive + o["neg_weight"] * negative
    terms = {"loss/pos": positive, "loss/neg": negative, "pseudo/quality": pseudo.quality,
             "pseudo/neg_classes_per_pixel": (mask_probs < o["neg_threshold"]).sum(1).double().mean()}
    student_mask, teacher_mask = probs.detach() < o["neg_threshold"], pseudo.probs < o["neg_threshold"]
    notes = {
        "the teacher's labels differ from the student's arg-max": not torch.equal(logits.argmax(1), pseudo.labels),
        "the teacher's and the student's negatives differ": not torch.equal(student_mask, teacher_mask),
        "probabilities clear of τ_n": _clear(pseudo.probs, probs, threshold=o["neg_threshold"]),
        "kept mass clear of float32 cancellation": _kept_mass(probs, mask_probs, o["neg_threshold"]) > 1e-3,
        "no arg-max ties": _clear_of_ties(pseudo.probs),
    }
    return Expected(terms, [loss], _grads(loss, student), buffers(student), {**teacher_state, **buffers(teacher)},
                    notes=notes)


def propagate_step(ctx: Context, trainable: set[str], history: list[tuple[torch.Tensor, torch.Tensor]]) -> Expected:
    """Spec §8.2 steps 1–10 (with §8.3, §8.4, #5, #11, #19, #21); ``history`` gathers every step's prototype samples."""
    o, scl = ctx.options, ctx.options["scl"]
    _recipe(o, neg_in_ce=True, mix_enabled=True, mix_from_weak=False, classmix_batch_union=True,
            class_balance__power=0.0, prior_correction__strength=0.0, teacher_bn_train=True)
    teacher, teacher_state = ctx.teacher()
    easy_weak, hard_weak = ctx.batch["easy"]["img"], ctx.batch["hard"]["img"]

    # 2. teacher: easy labels (no threshold, weight 1, #21) and projections, both of the WEAK easy view; hard labels, q
    with torch.no_grad():
        feats = teacher.encoder(easy_weak)
        easy_probs = up(teacher.decode_head(feats), easy_weak.shape[-2:]).softmax(1)
        easy_proj = teacher.proj_head(feats).double()
    easy_labels = easy_probs.argmax(1)
    hard = teacher_labels(teacher, hard_weak, o["conf_threshold"])

    # 4. one decision draw for the iteration, applied to each stream in turn
    aug, params, generator = ctx.strong_augment()
    easy_strong = aug.apply(easy_weak, params, generator)
    hard_strong = aug.apply(hard_weak, params, generator)

    # 5. hard pixel weights: q everywhere, the top and bottom rows zeroed
    height = hard.labels.shape[-2]
    rows = torch.arange(height)
    kept_rows = (rows >= o["ignore_top_rows"]) & (rows < height - o["ignore_bottom_rows"])
    hard_weights = hard.quality * kept_rows.double()[None, :, None].expand_as(hard.confidence)

    # 6. prototypes: the per-class mean of every teacher projection sample so far (cumulative, §8.3)
    factor, min_ratio = scl["downscale"], scl["min_ratio"]
    history.append((easy_proj, ratio_pooled(easy_labels, ctx.num_classes, factor, min_ratio)))
    samples = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f, _ in history])
    sample_labels = torch.cat([y.reshape(-1) for _, y in history])
    means = torch.zeros(ctx.num_classes, samples.shape[1], dtype=torch.float64)
    seen = torch.zeros(ctx.num_classes, dtype=torch.bool)
    for c in range(ctx.num_classes):
        if (sample_labels == c).any():
            means[c], seen[c] = samples[sample_labels == c].mean(0), True

    student = ctx.nets.load("student", ctx.student_state, trainable)
    # 7. easy CE (+ the built-in negative term, #5): the student's STRONG easy view against the weak view's labels
    easy_logits = up(student(easy_strong), easy_strong.shape[-2:])
    easy_p = easy_logits.softmax(1)
    loss_easy = o["easy_ce_weight"] * (pixel_ce_mean(easy_logits, easy_labels)
                                       + negative_term(easy_p, easy_p, o["neg_threshold"]))
    losses, terms = [loss_easy], {"loss/easy_ce": loss_easy}

    # 8. L_scl from start_step on: the student's projections of the STRONG hard view; hard labels ignored where w = 0
    if ctx.step >= scl["start_step"]:
        hard_feats = student.proj_head(student.encoder(hard_strong)).double()
        targets = torch.where(hard_weights == 0, IGNORE, hard.labels)
        loss_scl = scl["weight"] * prototype_contrast(
            hard_feats, ratio_pooled(targets, ctx.num_classes, factor, min_ratio), means, scl["temperature"],
            scl["reg_weight"] if scl["use_reg"] else 0.0)
        losses.append(loss_scl)
        terms["loss/scl"] = loss_scl

    # 9. ClassMix of the STRONG crops, augmented again with the same decisions (#11); w^m = M·1 + (1−M)·w^h
    mask = classmix_masks(easy_labels, batch_union=True,
                          generator=torch.Generator().manual_seed(step_seed(ctx.seed, ctx.step)))
    pasted = mask[:, None].to(easy_strong.dtype)
    mixed = aug.apply(pasted * easy_strong + (1 - pasted) * hard_strong, params, generator)
    mixed_labels = torch.where(mask, easy_labels, hard.labels)
    mixed_weights = torch.where(mask, torch.ones_like(hard_weights), hard_weights)
    mixed_logits = up(student(mixed), mixed.shape[-2:])
    mixed_p = mixed_logits.softmax(1)
    loss_mix = (pixel_ce_mean(mixed_logits, mixed_labels, mixed_weights)
                + negative_term(mixed_p, mixed_p, o["neg_threshold"]))  # the negative term is unweighted
    losses.append(loss_mix)
    terms["loss/mix"] = loss_mix

    terms["pseudo/quality_hard"] = hard.quality
    terms["proto/classes_seen"] = seen.sum().double()
    terms["proto/mean_norm"] = means[seen].norm(dim=1).mean()
    notes = {
        "0 < q < 1": 0 < float(hard.quality) < 1,
        "rows kept and rows ignored": bool(kept_rows.any() and not kept_rows.all()),
        "ClassMix pastes some pixels, not all": bool(mask.any() and not mask.all()),
        "confidences clear of conf_threshold": _clear(hard.confidence, threshold=o["conf_threshold"]),
        "probabilities clear of τ_n": _clear(easy_p, mixed_p, threshold=o["neg_threshold"]),
        "kept mass clear of float32 cancellation": min(_kept_mass(p, p, o["neg_threshold"]) for p in (easy_p, mixed_p))
        > 1e-3,
        "no arg-max ties": _clear_of_ties(easy_probs) and _clear_of_ties(hard.probs),
    }
    return Expected(terms, losses, _grads(sum(losses), student), buffers(student),
                    {**teacher_state, **buffers(teacher)}, prototypes=means, seen=seen, notes=notes)


def tent_step(ctx: Context, trainable: set[str]) -> Expected:
    """TENT: entropy_weight · mean per-pixel entropy (nats) of the student's prediction of x, not augmented."""
    images = ctx.batch["img"]
    student = ctx.nets.load("student", ctx.student_state, trainable)
    entropy = entropy_nats(up(student(images), images.shape[-2:]).softmax(1)).mean()
    loss = ctx.options["entropy_weight"] * entropy
    return Expected({"loss/entropy": entropy}, [loss], _grads(loss, student), buffers(student), ctx.teacher_state)


def shot_step(ctx: Context, trainable: set[str]) -> Expected:
    """SHOT-IM: mean per-pixel entropy − div_weight · entropy of the mean prediction over batch and pixels (nats)."""
    images = ctx.batch["img"]
    student = ctx.nets.load("student", ctx.student_state, trainable)
    probs = up(student(images), images.shape[-2:]).softmax(1)
    entropy = entropy_nats(probs).mean()
    marginal = probs.mean((0, 2, 3))
    diversity = -(marginal * marginal.log()).sum()
    loss = entropy - ctx.options["div_weight"] * diversity
    return Expected({"loss/ent": entropy, "loss/div": -diversity, "loss/total": loss}, [loss],
                    _grads(loss, student), buffers(student), ctx.teacher_state)


def selftrain_step(ctx: Context, trainable: set[str]) -> Expected:
    """Mean-teacher self-training: EMA update; CE of the student's A(x) against the teacher's arg-max of x on the
    pixels whose teacher confidence is >= pos_threshold (the others count in the mean with loss 0)."""
    o = ctx.options
    _recipe(o, teacher_bn_train=True)
    teacher, teacher_state = ctx.teacher()
    weak = ctx.batch["img"]
    pseudo = teacher_labels(teacher, weak, o["pos_threshold"])
    aug, params, generator = ctx.strong_augment()
    strong = aug.apply(weak, params, generator)
    student = ctx.nets.load("student", ctx.student_state, trainable)
    logits = up(student(strong), strong.shape[-2:])
    kept = pseudo.confidence >= o["pos_threshold"]
    ce = pixel_ce_mean(logits, torch.where(kept, pseudo.labels, IGNORE))
    notes = {"some pixels kept, some not": bool(kept.any() and not kept.all()),
             "confidences clear of pos_threshold": _clear(pseudo.confidence, threshold=o["pos_threshold"]),
             "no arg-max ties": _clear_of_ties(pseudo.probs)}
    return Expected({"loss/ce": ce, "pseudo/kept": kept.double().mean()}, [ce], _grads(ce, student),
                    buffers(student), {**teacher_state, **buffers(teacher)}, notes=notes)


# ---- preconditions: the stages compute their losses in float32, which must not flip a comparison made here


def _clear(*values: torch.Tensor, threshold: float, margin: float = 1e-6) -> bool:
    return all(bool(((v.detach() - threshold).abs() > margin).all()) for v in values)


def _kept_mass(probs: torch.Tensor, mask_probs: torch.Tensor, tau: float) -> float:
    """The smallest 1 − Σ_{negatives} p: near 0 a float32 subtraction loses its digits."""
    return float((1.0 - (probs.detach() * (mask_probs.detach() < tau)).sum(1)).min())


def _clear_of_ties(probs: torch.Tensor, margin: float = 1e-6) -> bool:
    top2 = probs.topk(2, dim=1).values
    return bool((top2[:, 0] - top2[:, 1] > margin).all())
