"""SAM on quantized weights, checked against its definition (float64: tolerances are float64 rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qfi_cli.optim import SAM, frozen_bn_stats
from qfi_cli.quant import calibrate, quantize_model, quantized_layers
from tests.conftest import tiny_cnn

RTOL = 1e-10  # float64 rounding over a few hundred elements stays far below this


def qmodel(bits: int = 4, quantizer: str = "lsq") -> nn.Module:
    model = quantize_model(tiny_cnn(), quantizer, wbits=bits, abits=bits, first_last_bits=None)
    return model


def prepared(bits, batch, quantizer="lsq"):
    model = qmodel(bits, quantizer)
    calibrate(model, batch[0])
    return model.train()


class CapturingSGD(torch.optim.SGD):
    """Records the gradients it steps with, and whether SAM still held an epsilon (or the weight a perturbation)."""

    def __init__(self, params, model, **kw):
        super().__init__(params, **kw)
        self.model, self.grads, self.eps_at_step, self.sam = model, None, None, None

    def step(self, closure=None):
        self.grads = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        self.eps_at_step = [self.sam.epsilon(m) for _, m in quantized_layers(self.model)]
        self.hooked_at_step = [len(m._weight_hooks) for _, m in quantized_layers(self.model)]
        return super().step(closure)


def loss_of(model, batch):
    return lambda: F.cross_entropy(model(batch[0]), batch[1])


def first_pass_grads(model, batch):
    """Gradient of the loss w.r.t. each layer's quantized weight Q(w) at the current weights (kept by a hook)."""
    model.zero_grad(set_to_none=True)
    kept = {}

    def keep(layer, w_q):
        w_q.retain_grad()
        kept[layer] = w_q

    handles = [m.register_quantized_hook(keep) for _, m in quantized_layers(model)]
    loss_of(model, batch)().backward()
    for h in handles:
        h.remove()
    return [kept[m].grad.clone() for _, m in quantized_layers(model)]


def perturbed(model, eps):
    """Hooks that add ``eps`` (one per quantized layer) to the weights the forward computes with."""
    shift = {m: e for (_, m), e in zip(quantized_layers(model), eps)}
    return [m.register_weight_hook(lambda layer, w: w + shift[layer]) for m in shift]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_epsilon_global_norm_equals_rho(bits, batch):
    model = prepared(bits, batch)
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.07)
    loss_of(model, batch)().backward()
    sam._set_epsilon()
    eps = [sam.epsilon(m) for _, m in quantized_layers(model)]
    norm = torch.sqrt(sum((e**2).sum() for e in eps))
    assert norm.item() == pytest.approx(0.07, rel=RTOL)
    # one GLOBAL norm: each layer's epsilon is rho * g / ||g||_global, not per-layer normalised
    grads = [sam.kept(m)[0].grad for _, m in quantized_layers(model)]
    gnorm = torch.sqrt(sum((g**2).sum() for g in grads))
    for e, g in zip(eps, grads):
        torch.testing.assert_close(e, 0.07 * g / gnorm, rtol=RTOL, atol=0)
    sam.clear()


def test_asam_scaled_norm_equals_rho(batch):
    model = prepared(4, batch)
    eta = 0.01
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, adaptive=True, eta=eta)
    loss_of(model, batch)().backward()
    sam._set_epsilon()
    # ASAM: eps = rho T^2 g / ||T g||, so ||eps / T|| = rho with T = |Q(w)| + eta
    scaled = [sam.epsilon(m) / (sam.kept(m)[0].detach().abs() + eta) for _, m in quantized_layers(model)]
    assert torch.sqrt(sum((s**2).sum() for s in scaled)).item() == pytest.approx(0.5, rel=RTOL)
    sam.clear()


def test_no_epsilon_after_step_in_eval_or_state_dict(batch):
    model = prepared(4, batch)
    opt = CapturingSGD(model.parameters(), model, lr=0.1)
    sam = opt.sam = SAM(model, opt, rho=0.05)
    sam.step(loss_of(model, batch))
    assert all(e is None for e in opt.eps_at_step), "epsilon must be gone before the base optimizer steps"
    assert opt.hooked_at_step == [0] * len(opt.hooked_at_step), "no perturbation hook left when the optimizer steps"
    assert all(sam.epsilon(m) is None and not sam.kept(m) for _, m in quantized_layers(model))
    assert not any("epsilon" in k for k in model.state_dict())
    assert all(set(vars(m)) == set(vars(r)) for (_, m), (_, r) in zip(quantized_layers(model),
                                                                        quantized_layers(qmodel()))), \
        "SAM writes no attribute onto a layer"
    model.eval()
    reference = copy.deepcopy(model)
    sam.remove()
    assert torch.equal(model(batch[0]), reference(batch[0]))


def test_epsilon_cleared_when_second_pass_raises(batch):
    model = prepared(4, batch)
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return loss_of(model, batch)()

    with pytest.raises(RuntimeError):
        sam.step(flaky)
    assert all(sam.epsilon(m) is None and not m._weight_hooks for _, m in quantized_layers(model))


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_second_pass_gradient_is_gradient_at_perturbed_weights(clip, batch):
    model = prepared(4, batch)
    reference = copy.deepcopy(model)
    opt = CapturingSGD(model.parameters(), model, lr=0.1)
    opt.sam = SAM(model, opt, rho=0.05, grad_clip=clip)
    opt.sam.step(loss_of(model, batch))

    grads = first_pass_grads(reference, batch)
    gnorm = torch.sqrt(sum((g**2).sum() for g in grads))
    handles = perturbed(reference, [0.05 * g / gnorm for g in grads])
    reference.zero_grad(set_to_none=True)
    with frozen_bn_stats(reference):
        loss_of(reference, batch)().backward()
    for h in handles:
        h.remove()
    expected = [p.grad.clone() for p in reference.parameters()]
    if clip:
        total = torch.sqrt(sum((g**2).sum() for g in expected))
        assert total > clip, "the test needs clipping to bite"
        expected = [g * (clip / (total + 1e-6)) for g in expected]
    for got, want in zip(opt.grads, expected):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-14)


def test_bn_statistics_update_once(batch):
    model = prepared(4, batch)
    plain = copy.deepcopy(model)
    SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05).step(loss_of(model, batch))
    with torch.no_grad():
        plain(batch[0])
    bns = [(a, b) for a, b in zip(model.modules(), plain.modules()) if isinstance(a, nn.BatchNorm2d)]
    assert bns
    for a, b in bns:
        assert torch.equal(a.running_mean, b.running_mean)
        assert torch.equal(a.running_var, b.running_var)
        assert torch.equal(a.num_batches_tracked, b.num_batches_tracked)


def test_rho_zero_is_plain_training(batch):
    model = prepared(4, batch)
    plain = copy.deepcopy(model)
    SAM(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.0).step(loss_of(model, batch))
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad()
    loss_of(plain, batch)().backward()
    opt.step()
    for a, b in zip(model.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


def test_32bit_sam_step_matches_paper_equations(batch):
    """Foret et al. (2021), eq. 2-3: e = rho g/||g||, w <- w - lr * grad L(w + e), perturbing conv/linear weights."""
    lr, rho = 0.1, 0.05
    float_model = tiny_cnn()
    model = quantize_model(copy.deepcopy(float_model), "lsq", wbits=32, abits=32, first_last_bits=None).train()
    SAM(model, torch.optim.SGD(model.parameters(), lr=lr), rho=rho).step(loss_of(model, batch))

    ref = float_model.train()
    weights = [m.weight for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = list(ref.parameters())
    loss = F.cross_entropy(ref(batch[0]), batch[1])
    g = torch.autograd.grad(loss, weights)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    saved = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w, gi in zip(weights, g):
            w.add_(rho * gi / norm)
    with frozen_bn_stats(ref):
        grads = torch.autograd.grad(F.cross_entropy(ref(batch[0]), batch[1]), params)
    with torch.no_grad():
        for w, s in zip(weights, saved):
            w.copy_(s)
        for p, gp in zip(params, grads):
            p.sub_(lr * gp)
    got = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=RTOL, atol=1e-14)
    for name, b in ref.named_buffers():
        torch.testing.assert_close(model.state_dict()[name], b, rtol=0, atol=0)


def test_quantized_sam_perturbs_quantized_weights_not_floats(batch):
    """Case 3 of SAQ: the second pass computes with Q(w) + eps; the float weights are never perturbed."""
    model = prepared(4, batch)
    before = [m.weight.detach().clone() for _, m in quantized_layers(model)]
    seen = []
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.0), rho=0.05)

    def spy():
        seen.append([(m.quantize_weight().detach().clone(), sam.epsilon(m)) for _, m in quantized_layers(model)])
        return loss_of(model, batch)()

    sam.step(spy)
    second = seen[1]
    for (w_used, eps), (_, m) in zip(second, quantized_layers(model)):
        q = m.quan_w_fn(m.weight, m.wbits).detach()
        torch.testing.assert_close(w_used, q + eps, rtol=0, atol=0)
    for b, (_, m) in zip(before, quantized_layers(model)):
        assert torch.equal(b, m.weight.detach())


def test_first_and_second_step_equal_step(batch):
    """The optimizer-style API (forward/backward, first_step, forward/backward, second_step) and step(closure) make
    the same update; step returns the first pass's loss and output."""
    a, b = prepared(4, batch), None
    b = copy.deepcopy(a)
    sam_a = SAM(a, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    sam_b = SAM(b, torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    for _ in range(2):
        F.cross_entropy(a(batch[0]), batch[1]).backward()
        sam_a.first_step()
        assert all(sam_a.epsilon(m) is not None for _, m in quantized_layers(a))
        F.cross_entropy(a(batch[0]), batch[1]).backward()
        sam_a.second_step()
        loss, out = sam_b.step(lambda: (F.cross_entropy(o := b(batch[0]), batch[1]), o))
        assert out.shape == (8, 3) and loss.requires_grad is False
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_epsilon_follows_the_summed_gradient_of_several_forwards(batch):
    """A pass may run several forwards (RandBET: clean + faulty loss): the ascent is along the gradient of their
    summed loss w.r.t. Q(w), i.e. the sum of each forward's gradient."""
    model = prepared(4, batch)
    reference = copy.deepcopy(model)
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    x2 = batch[0].flip(0)
    (F.cross_entropy(model(batch[0]), batch[1]) + F.cross_entropy(model(x2), batch[1])).backward()
    sam._set_epsilon()
    g1 = first_pass_grads(reference, batch)
    g2 = first_pass_grads(reference, (x2, batch[1]))
    total = [a + b for a, b in zip(g1, g2)]
    norm = torch.sqrt(sum((g**2).sum() for g in total))
    for (_, m), g in zip(quantized_layers(model), total):
        torch.testing.assert_close(sam.epsilon(m), 0.05 * g / norm, rtol=RTOL, atol=1e-15)
    sam.clear()


def test_sam_keeps_its_state_in_self_state_keyed_by_weight(batch):
    """As davda54/sam: the kept Q(w) and epsilon live in ``sam.state[layer.weight]``; a copy of the model (its own
    weights) is not tracked, and ``remove()`` detaches SAM's hooks."""
    model = prepared(4, batch)
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    twin = copy.deepcopy(model)
    loss_of(model, batch)().backward()
    loss_of(twin, batch)().backward()
    layers = [m for _, m in quantized_layers(model)]
    assert set(sam.state) == {m.weight for m in layers}
    assert all(len(sam.state[m.weight]["quantized"]) == 1 for m in layers)
    sam.first_step()
    assert all(sam.state[m.weight]["epsilon"].shape == m.weight.shape for m in layers)
    assert all("quantized" not in sam.state[m.weight] for m in layers)
    sam.clear()
    sam.remove()
    assert all(not m._quantized_hooks and not m._weight_hooks for m in layers)


def test_sam_trusts_the_typed_config():
    """The rules on rho and eta are written once, in config.py (the pre-check), not repeated by SAM."""
    from qfi_cli.config import SamConfig
    from qfi_cli.errors import QfiError

    with pytest.raises(QfiError, match="sam.eta must be > 0 with ASAM"):
        SamConfig(adaptive=True, eta=0.0).validated()
    with pytest.raises(QfiError, match="sam.rho must be >= 0"):
        SamConfig(rho=-1.0).validated()
