"""VIB cell: KL against torch.distributions, sampling statistics, eval == mean, four usages."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from facevib.models import IBasicBlock, VIBCell, gaussian_kl, reparameterize, softplus_sigma
from facevib.models.vib import SIGMA_BIAS_INIT, vib_sample


def _reference_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Independent reference: torch.distributions, summed per sample, averaged over the batch."""
    per_element = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    return per_element.flatten(1).sum(dim=1).mean()


class _Raises(nn.Module):
    """A sigma transform that must not run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("sigma branch ran")


class _SelfAttention(nn.Module):
    """Adapter: nn.MultiheadAttention as a one-input branch (B, L, E) -> (B, L, E)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class _Residual(nn.Module):
    """x + cell(x): the VIB cell as the non-identity branch, sampled before the sum."""

    def __init__(self, cell: VIBCell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, return_kl: bool = False):
        out = self.cell(x, return_kl=return_kl)
        if return_kl:
            return x + out[0], out[1]
        return x + out


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    log_sigma = 0.7 * torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    expected = _reference_kl(mu, log_sigma.exp())
    torch.testing.assert_close(gaussian_kl(mu, log_sigma), expected, rtol=1e-12, atol=1e-12)
    per_sample = gaussian_kl(mu, log_sigma, reduction="none")
    assert per_sample.shape == (4,)
    torch.testing.assert_close(per_sample.mean(), expected)


def test_gaussian_kl_is_float32_for_half_inputs_and_rejects_bad_args():
    mu = torch.randn(2, 64, 8, 8).to(torch.bfloat16)
    log_sigma = torch.full_like(mu, -5.0)
    assert gaussian_kl(mu, log_sigma).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="'sum'"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3), reduction="sum")


def test_softplus_sigma_is_finite_where_softplus_underflows():
    pre = torch.tensor([-300.0, -120.0, -21.0, -5.0, 0.0, 30.0], requires_grad=True)
    sigma, log_sigma = softplus_sigma(pre)
    torch.testing.assert_close(sigma, F.softplus(pre))
    moderate = pre.detach() > -100
    torch.testing.assert_close(log_sigma[moderate], F.softplus(pre.detach()[moderate]).log())
    assert torch.equal(log_sigma[:2], pre.detach()[:2])  # log(softplus(z)) == z there
    (log_sigma.sum() + sigma.sum()).backward()
    # Reference in float64, where softplus(-300) = 5e-131 does not underflow:
    # d/dz [log softplus(z) + softplus(z)] = sigmoid(z) / softplus(z) + sigmoid(z).
    wide = pre.detach().double().requires_grad_(True)
    (F.softplus(wide).log().sum() + F.softplus(wide).sum()).backward()
    torch.testing.assert_close(pre.grad.double(), wide.grad, rtol=1e-6, atol=0)
    # KL of a collapsed sigma is large but finite, so 0 * KL (a beta of 0) is 0, not NaN.
    kl = gaussian_kl(torch.zeros(1, 6), log_sigma.detach().unsqueeze(0))
    expected = _reference_kl(torch.zeros(1, 6, dtype=torch.float64), F.softplus(pre.detach().double()).unsqueeze(0))
    torch.testing.assert_close(kl.double(), expected, rtol=1e-6, atol=0)
    assert (0.0 * kl) == 0.0


def test_reparameterize_uses_mu_and_sigma():
    torch.manual_seed(0)
    mu = torch.zeros(200_000)
    sample = reparameterize(mu + 2.0, torch.full_like(mu, 0.5))
    assert abs(sample.mean().item() - 2.0) < 0.01
    assert abs(sample.std().item() - 0.5) < 0.01


def test_sigma_starts_where_the_paper_starts_it():
    # "Cell Variational Information Bottleneck Network" (arXiv:2403.15082, withdrawn): sigma = softplus(F_sigma(x) + b) with b
    # initialised to -5, so sigma starts at ln(1 + e^-5) = 0.0067153485 whatever the input.
    sigma_linear = nn.Linear(4, 3)
    nn.init.zeros_(sigma_linear.weight)
    nn.init.zeros_(sigma_linear.bias)
    cell = VIBCell(nn.Linear(4, 3), sigma_linear, 3, channel_dim=-1)
    log_sigma = cell.log_sigma(torch.randn(2, 4) * 10)
    torch.testing.assert_close(log_sigma.exp(), torch.full((2, 3), 0.0067153485), rtol=1e-6, atol=0)


def test_eval_returns_exactly_the_mean_without_running_sigma():
    mean = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    cell = VIBCell(mean, _Raises(), 8).eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(cell(x), mean(x))


def test_train_samples_have_predicted_mean_and_std():
    torch.manual_seed(1)
    cell = VIBCell(nn.Linear(5, 3), nn.Linear(5, 3), 3, channel_dim=-1, bias_init=0.0).train()
    draws = 40_000
    x = torch.randn(1, 5).expand(draws, 5)
    with torch.no_grad():
        mu = cell.mean(x[:1])[0]
        sigma = F.softplus(cell.sigma(x[:1])[0] + cell.bias)
        samples = cell(x)
    # Standard errors: sigma / sqrt(N) for the mean, ~sigma / sqrt(2N) for the std.
    assert ((samples.mean(0) - mu).abs() < 5 * sigma / draws**0.5).all()
    assert ((samples.std(0) / sigma - 1).abs() < 5 / (2 * draws) ** 0.5).all()


def test_cell_kl_equals_reference_on_its_own_mu_and_sigma():
    torch.manual_seed(2)
    cell = VIBCell(nn.Linear(6, 4), nn.Linear(6, 4), 4, channel_dim=-1, bias_init=-1.0)
    x = torch.randn(7, 6)
    _, kl = cell(x, return_kl=True)
    with torch.no_grad():
        expected = _reference_kl(cell.mean(x), F.softplus(cell.sigma(x) + cell.bias))
    torch.testing.assert_close(kl.detach(), expected, rtol=1e-5, atol=1e-5)


def _conv_cell() -> tuple[nn.Module, torch.Tensor]:
    mean = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.PReLU(6))
    return VIBCell(mean, nn.Conv2d(4, 6, 1), 6), torch.randn(3, 4, 5, 5)


def _residual_cell() -> tuple[nn.Module, torch.Tensor]:
    branch = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    return _Residual(VIBCell(branch, nn.Conv2d(4, 4, 3, padding=1), 4)), torch.randn(3, 4, 5, 5)


def _linear_cell() -> tuple[nn.Module, torch.Tensor]:
    return VIBCell(nn.Linear(10, 8), nn.Linear(10, 8), 8, channel_dim=-1), torch.randn(3, 10)


def _attention_cell() -> tuple[nn.Module, torch.Tensor]:
    # Cheaper sigma: a linear map of each token instead of attention.
    return VIBCell(_SelfAttention(8, 2), nn.Linear(8, 8), 8, channel_dim=-1), torch.randn(3, 5, 8)


@pytest.mark.parametrize("build", [_conv_cell, _residual_cell, _linear_cell, _attention_cell])
def test_cell_wraps_conv_residual_linear_and_attention(build):
    torch.manual_seed(3)
    module, x = build()
    module.train()
    out, kl = module(x, return_kl=True)
    cell = module.cell if isinstance(module, _Residual) else module
    with torch.no_grad():  # train-mode BatchNorm: the same batch statistics as the forward above
        expected_kl = _reference_kl(cell.mean(x), F.softplus(cell.pre_sigma(x)))
    assert kl.dim() == 0
    torch.testing.assert_close(kl.detach(), expected_kl, rtol=1e-5, atol=1e-5)
    (out.square().mean() + 1e-3 * kl).backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert not torch.equal(module(x), module(x))  # training samples
    module.eval()
    expected = cell.mean(x) + (x if isinstance(module, _Residual) else 0)
    assert torch.equal(module(x), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace is deprecated in torch 2.13
def test_eval_cell_traces_without_sigma_ops():
    module, x = _conv_cell()
    traced = torch.jit.trace(module.eval(), x)
    graph = str(traced.graph)
    assert "softplus" not in graph and "randn" not in graph
    assert torch.equal(traced(x), module(x))


def test_cell_rejects_bad_configuration():
    with pytest.raises(ValueError, match="batch"):
        VIBCell(nn.Linear(2, 2), nn.Linear(2, 2), 2, channel_dim=0)
    with pytest.raises(ValueError, match="num_channels"):
        VIBCell(nn.Linear(2, 2), nn.Linear(2, 2), 0)
    with pytest.raises(ValueError, match="forward_with_mean"):
        VIBCell(None, nn.Linear(2, 2), 2, channel_dim=-1)(torch.zeros(1, 2))


def _composed(mu: torch.Tensor, pre: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VIB cell as separate autograd ops (the reference the fused node must equal)."""
    sigma, log_sigma = softplus_sigma(pre + bias.view(1, -1, *([1] * (pre.dim() - 2))))
    return reparameterize(mu, sigma), gaussian_kl(mu, log_sigma)


def _fused_inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, 4, 5, 5, dtype=dtype, generator=gen).requires_grad_()
    # Pre-activations from -11 to +5: sigma from 2e-5 to 5, both softplus regimes.
    pre = (4.0 * torch.randn(3, 4, 5, 5, dtype=dtype, generator=gen) - 3.0).requires_grad_()
    bias = torch.randn(4, dtype=dtype, generator=gen).requires_grad_()
    return mu, pre, bias


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_sample_and_gradients_equal_the_composed_autograd_ops(dtype):
    mu, pre, bias = _fused_inputs(dtype)
    gen = torch.Generator().manual_seed(1)
    grad_sample = torch.randn(mu.shape, dtype=dtype, generator=gen)
    grad_kl = torch.tensor(0.37, dtype=dtype)
    results = []
    for build in (lambda: vib_sample(mu, pre, bias), lambda: _composed(mu, pre, bias)):
        torch.manual_seed(5)  # both draw eps from the global generator
        sample, kl = build()
        grads = torch.autograd.grad((sample * grad_sample).sum() + grad_kl * kl, (mu, pre, bias))
        results.append((sample, kl, grads))
    (sample, kl, grads), (sample_ref, kl_ref, grads_ref) = results
    assert sample.dtype == kl.dtype == dtype
    torch.testing.assert_close(sample, sample_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-6, atol=0)
    for grad, ref in zip(grads, grads_ref, strict=True):
        assert ((grad - ref).abs() <= 1e-6 * ref.abs().max()).all()


def test_fused_gradients_pass_gradcheck():
    mu, pre, bias = _fused_inputs(torch.float64, 2)
    mu, pre = (t.detach()[:2, :, :2, :2].clone().requires_grad_() for t in (mu, pre))
    generator = torch.Generator()

    def fused(mu, pre, bias):
        generator.manual_seed(3)  # the same eps at every evaluation of the finite differences
        return vib_sample(mu, pre, bias, generator=generator)

    assert torch.autograd.gradcheck(fused, (mu, pre, bias))

    def sample_only(mu, pre, bias):  # without the KL, mu is not kept
        generator.manual_seed(3)
        return vib_sample(mu, pre, bias, generator=generator, return_kl=False)[0]

    assert torch.autograd.gradcheck(sample_only, (mu, pre, bias))


@pytest.mark.parametrize("keep_noise", [False, True])
def test_fused_node_keeps_only_pre_activation_mu_and_maybe_noise_for_backward(keep_noise):
    mu, pre, bias = _fused_inputs(torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        vib_sample(mu * 1.0, pre * 1.0, bias, keep_noise=keep_noise)  # the products' backward saves only scalars
    shapes = sorted(tuple(t.shape) for t in saved if t.dim() > 0)
    kept = [(3, 4, 5, 5)] * (3 if keep_noise else 2) + [(4,)]  # pre, mu, (eps) and the bias
    assert shapes == kept


def test_kept_and_redrawn_noise_give_the_same_sample_and_gradients():
    """Keeping eps (the CPU default) and redrawing it from the generator state (CUDA's) are
    the same computation; with a BatchNorm in front of both inputs as in the iResNet cells."""
    torch.manual_seed(0)
    norms = [nn.BatchNorm2d(4).double().train() for _ in range(2)]
    for norm in norms:
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.3, 0.3)
    mu, pre, bias = _fused_inputs(torch.float64, 3)
    results = []
    for keep in (True, False):
        torch.manual_seed(9)
        sample, kl = vib_sample(mu, pre, bias, mean_norm=norms[0], sigma_norm=norms[1], keep_noise=keep)
        params = (mu, pre, bias, *norms[0].parameters(), *norms[1].parameters())
        results.append((sample, kl, torch.autograd.grad(sample.square().sum() + kl, params)))
    (sample, kl, grads), (sample_ref, kl_ref, grads_ref) = results
    assert torch.equal(sample, sample_ref) and torch.equal(kl, kl_ref)
    for grad, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)


def test_fused_node_is_finite_where_softplus_underflows():
    pre = torch.tensor([[-300.0, -120.0, -95.0, -21.0, -5.0, 0.0, 30.0]], requires_grad=True)
    mu = torch.zeros_like(pre, requires_grad=True)
    sample, kl = vib_sample(mu, pre, torch.zeros(7), channel_dim=-1)
    (sample.sum() + kl).backward()
    # float64 reference where softplus(-300) = 5e-131 does not underflow.
    wide = pre.detach().double()
    expected_kl = _reference_kl(torch.zeros_like(wide), F.softplus(wide))
    torch.testing.assert_close(kl.double(), expected_kl, rtol=1e-6, atol=0)
    assert torch.isfinite(pre.grad).all() and torch.isfinite(mu.grad).all()
    # d KL / dz = sigma * sigmoid(z) - sigmoid(z) / softplus(z) -> -1 as z -> -inf.
    torch.testing.assert_close(pre.grad[0, :4], torch.full((4,), -1.0), rtol=0, atol=1e-6)


def test_fused_sample_is_float32_under_bfloat16_autocast():
    torch.manual_seed(4)
    mu = (1.0 + 3.0 * torch.rand(64, 16, 4, 4)).to(torch.bfloat16)  # |mu| in [1, 4)
    pre = torch.zeros_like(mu)
    bias = torch.full((16,), SIGMA_BIAS_INIT)  # sigma = softplus(-5) = 0.0067
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sample, kl = vib_sample(mu, pre, bias)
    assert sample.dtype == torch.float32 and kl.dtype == torch.float32
    assert (sample != mu.float()).all()  # a bfloat16 sample would equal mu for about half of them
    assert not (sample.to(torch.bfloat16) != mu).all()
    noise = (sample - mu.float()) / F.softplus(torch.tensor(SIGMA_BIAS_INIT))
    # The noise is standard normal: its mean and std within 5 standard errors.
    assert abs(noise.mean().item()) < 5 / noise.numel() ** 0.5
    assert abs(noise.std().item() - 1.0) < 5 / (2 * noise.numel()) ** 0.5


def test_fused_node_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        vib_sample(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3), channel_dim=-1)
    with pytest.raises(ValueError, match="bias"):
        vib_sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(4), channel_dim=-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell_block_with_fused_batchnorms_equals_the_composed_ops(dtype):
    """An iResNet cell block: both branches' BN-conv-BN-PReLU merged, bn3 of both inside the
    node. Sample, KL, every parameter's gradient and the BatchNorms' running statistics
    equal the block run as separate autograd ops (bn3, softplus, randn, addcmul, KL)."""
    import copy

    from facevib.models.iresnet import IBasicBlock

    torch.manual_seed(0)
    fused = IBasicBlock(8, 8, sigma_width=2).to(dtype).train()
    for module in fused.modules():  # non-trivial BatchNorm affine parameters
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.3, 0.3)
    nn.init.uniform_(fused.vib.bias, -3.0, 1.0)
    composed = copy.deepcopy(fused)
    x = torch.randn(4, 8, 6, 6, dtype=dtype)
    grad_out = torch.randn(4, 8, 6, 6, dtype=dtype)

    torch.manual_seed(7)
    out, kl = fused(x, return_kl=True)
    ((out * grad_out).sum() + 0.3 * kl).backward()

    torch.manual_seed(7)
    mu = composed.residual(x)
    sigma, log_sigma = softplus_sigma(composed.vib.pre_sigma(x))
    out_ref = reparameterize(mu, sigma) + x
    kl_ref = gaussian_kl(mu, log_sigma)
    ((out_ref * grad_out).sum() + 0.3 * kl_ref).backward()

    # float64 checks the mathematics; float32 allows for the merged first layers' other
    # summation order (the fold of BN1's scale into the conv weights), amplified by BN2.
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, out_ref.to(out.dtype), rtol=tol, atol=tol * out_ref.abs().max().item())
    torch.testing.assert_close(kl, kl_ref, rtol=tol, atol=0)
    for (name, param), ref in zip(fused.named_parameters(), composed.parameters(), strict=True):
        assert ((param.grad - ref.grad).abs() <= tol * ref.grad.abs().max() + 1e-12).all(), name
    for (name, buffer), ref in zip(fused.named_buffers(), composed.buffers(), strict=True):
        torch.testing.assert_close(buffer, ref, rtol=1e-6, atol=1e-7, msg=name)  # one running-stat update


def test_compiled_cell_samples_the_same_as_the_fused_node():
    """Under torch.compile the cell runs as plain ops; same seed -> same sample, KL, grads."""
    torch.manual_seed(0)
    mean = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    cell = VIBCell(None, nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), 4, bias_init=-1.0).train()
    x = torch.randn(2, 3, 5, 5)

    def run(fn):
        cell.zero_grad()
        torch.manual_seed(3)
        out, kl = fn(x)
        (out.square().sum() + kl).backward()
        return out.detach(), kl.detach(), [p.grad.clone() for p in cell.parameters()]

    def step(inputs):
        return cell.forward_with_mean(inputs, mean[0](inputs), return_kl=True, mean_norm=mean[1])

    eager = run(step)
    compiled = run(torch.compile(step, backend="eager", fullgraph=True))  # fullgraph: no graph break
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-6, atol=1e-6)
    for got, expected in zip(compiled[2], eager[2], strict=True):
        # A conv bias before a BatchNorm has gradient 0 up to rounding: relative to the largest.
        assert ((got - expected).abs() <= 1e-5 * expected.abs().max() + 1e-5).all()


def test_compiled_cell_traces_with_dynamic_shapes():
    """A dynamic-shape trace (what torch.compile makes on a second batch or map size) of a
    training cell block: it must trace, and sample as eager does at each size."""
    torch.manual_seed(0)
    block = IBasicBlock(4, 4, sigma_width=2).train()
    compiled = torch.compile(block, backend="eager", dynamic=True, fullgraph=True)
    for shape in ((2, 4, 6, 6), (3, 4, 5, 7)):
        x = torch.randn(shape)
        torch.manual_seed(1)
        expected, expected_kl = block(x, return_kl=True)
        torch.manual_seed(1)
        out, kl = compiled(x, return_kl=True)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg=str(shape))
        torch.testing.assert_close(kl, expected_kl, rtol=1e-5, atol=0, msg=str(shape))


def test_inductor_compiled_merged_block_has_the_eager_kl_and_gradients():
    """The GPU recipes compile with inductor, and on CUDA every cell block merges its heads.
    Compiled that way (here inductor's CPU backend, static shapes as the trainer's fixed
    batches give), the block's KL and the KL's gradients equal eager's. They do not depend
    on the noise, which inductor draws from its own stream. Measured: 1.2e-6 of the
    gradient's norm (default, AVX2 and AVX-512 kernels; conftest gives each its own
    inductor cache)."""
    torch.manual_seed(0)
    block = IBasicBlock(16, 16, sigma_width=4).train()
    block.merge_heads = True
    reference = copy.deepcopy(block)
    compiled = torch.compile(block, dynamic=False)
    x = torch.randn(4, 16, 8, 8)
    kls = []
    for model in (compiled, reference):
        kls.append(model(x, return_kl=True)[1])
        kls[-1].backward()
    torch.testing.assert_close(kls[0], kls[1], rtol=1e-5, atol=0)
    got, expected = (torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (block, reference))
    assert (got - expected).norm() <= 1e-5 * expected.norm()


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_merged_branch_heads_equal_the_layers_run_one_by_one(size):
    """One normalisation, one convolution and one BN2 for two branches equal the separate
    layers (float64): outputs, every gradient, and each BatchNorm's running statistics,
    on maps small enough that every pixel touches the zero padding, with a conv bias and a
    cumulative-average (momentum None) BatchNorm."""
    import copy

    from facevib.models.shared_input import BranchHead, can_merge, merged_branch_heads

    torch.manual_seed(0)

    def head(out_channels: int, conv_bias: bool, momentum: float | None) -> BranchHead:
        layers = BranchHead(
            nn.BatchNorm2d(6, momentum=momentum),
            nn.Conv2d(6, out_channels, 3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )
        for norm in (layers.norm_in, layers.norm_out):
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.uniform_(norm.bias, -0.5, 0.5)
            norm.double().train()
        layers.conv.double()
        layers.act.double()
        return layers

    heads = [head(8, False, 0.1), head(2, True, None)]
    reference = copy.deepcopy(heads)
    assert can_merge(heads)
    x = torch.randn(4, 6, size, size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    merged = merged_branch_heads(x, heads)
    separate = [h.act(h.norm_out(h.conv(h.norm_in(x_ref)))) for h in reference]
    grads_out = [torch.randn_like(out) for out in separate]
    sum((out * g).sum() for out, g in zip(merged, grads_out, strict=True)).backward()
    sum((out * g).sum() for out, g in zip(separate, grads_out, strict=True)).backward()
    for out, ref in zip(merged, separate, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    for layers, ref_layers in zip(heads, reference, strict=True):
        for module, ref_module in zip(layers, ref_layers, strict=True):
            for (name, param), ref in zip(module.named_parameters(), ref_module.parameters(), strict=True):
                torch.testing.assert_close(param.grad, ref.grad, rtol=1e-10, atol=1e-10, msg=name)
            for (name, buffer), ref in zip(module.named_buffers(), ref_module.buffers(), strict=True):
                torch.testing.assert_close(buffer, ref, rtol=1e-12, atol=1e-12, msg=name)


def test_branch_heads_merge_only_when_the_result_is_the_same():
    from facevib.models.shared_input import BranchHead, can_merge

    def head(stride: int = 1, eps: float = 1e-5) -> BranchHead:
        return BranchHead(
            nn.BatchNorm2d(4, eps=eps), nn.Conv2d(4, 4, 3, stride, padding=1), nn.BatchNorm2d(4), nn.PReLU(4)
        )

    assert can_merge([head(), head()])
    assert not can_merge([head(), head(stride=2)])  # the bias image assumes stride 1
    assert not can_merge([head(), head(eps=1e-3)])  # one normalisation for both
    evaluating = head()
    evaluating.norm_in.eval()  # running statistics, not the batch's
    assert not can_merge([head(), evaluating])


def test_heads_merge_where_the_activation_outweighs_the_kernel():
    """The shape rule of training's cell blocks (docs/results.md has the per-stage timings
    it follows): at batch 8 r50's second stage merges, its third does not; the demo r18's
    last stage (32 x 128 x 7^2) does not; at batch 128 r50's third stage merges, its last
    does not. ``merge_heads`` True / False overrides the rule."""
    from facevib.models.iresnet import IBasicBlock

    def block(channels: int) -> IBasicBlock:
        return IBasicBlock(channels, channels, sigma_width=channels // 4).train()

    assert block(128)._merges(torch.empty(8, 128, 28, 28))
    assert not block(256)._merges(torch.empty(8, 256, 14, 14))
    assert not block(128)._merges(torch.empty(32, 128, 7, 7))
    assert block(256)._merges(torch.empty(128, 256, 14, 14))
    assert not block(512)._merges(torch.empty(128, 512, 7, 7))
    # Off the CPU (a meta tensor stands in for CUDA here) every block merges: memory decides.
    assert block(512)._merges(torch.empty(8, 512, 7, 7, device="meta"))
    forced = block(256)
    forced.merge_heads = True
    assert forced._merges(torch.empty(8, 256, 14, 14))
    forced.merge_heads = False
    assert not forced._merges(torch.empty(64, 256, 28, 28))
