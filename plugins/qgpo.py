"""QGPO: Contrastive Energy Prediction for Exact Energy-Guided Diffusion Sampling (Lu, Chen, Chen, Su, Li, Zhu;
ICML 2023, arXiv:2304.12824).

Target policy pi(a | s) proportional to mu(a | s) exp(beta Q(s, a)), sampled by guiding the behaviour diffusion mu
with the gradient of an intermediate energy f_phi(x_t, t, s) that Contrastive Energy Prediction makes exact.

Behaviour model first (continuous-time VP SDE, eps-prediction, the first ``behaviour_steps`` of the phase):
    eps_theta <- argmin E_{t ~ U(1e-3, 1), z} [ || eps_theta(alpha_t a + sigma_t z, t, s) - z ||^2 ]
Then the energy model, with eps_theta and the critic frozen; per state s of the energy batch:
    a_1..a_K ~ mu_theta(. | s)                  K = 16 support actions (the unguided sampler)
    p_i = softmax_i(beta Q(s, a_i))             beta = 3
    t ~ U(1e-3, 1), one per state;  x_t^i = alpha_t a_i + sigma_t z_i, fresh z_i per action
    L(phi) = - E_s sum_i p_i log softmax_i f_phi(x_t^i, t, s)
Sampling (DPM-Solver++ 2S, 15 model calls, t from 1 to 1e-3), one action per state, no ranking:
    eps(x_t, t, s) = eps_theta(x_t, t, s) - s_scale sigma_t grad_x f_phi(x_t, t, s)
i.e. the guided score is the behaviour score plus s_scale grad f. s_scale = 0 samples the behaviour model.

Support actions are drawn per batch from the frozen behaviour model (the authors draw them once for the whole
dataset), so an energy step costs K x ``support_steps`` behaviour calls per state of its batch.

Guidance (QGPO's own critic, ``--guidance qgpo``): in-support softmax Q-learning, twin Q with a Polyak target,
    Q_i <- argmin E[ (Q_i(s, a) - (r + gamma (1 - d) V(s')))^2 ],
    V(s') = sum_j softmax_j(q_alpha Qtarg(s', a'_j)) Qtarg(s', a'_j),  a'_1..a'_K ~ mu_theta(. | s'),  K = 16
with Qtarg the target twin's minimum and q_alpha 1: a soft maximum over behaviour samples, so Q stays in the
data's support without an expectile. The a'_j come from the policy's behaviour model, so this critic trains jointly
only. Any Q serves the policy: the policy-independent IQL critic ``idql`` is the guidance-first alternative.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from modzoo import (
    Batch,
    DiffusionPolicy,
    GuidanceModule,
    HalfSpec,
    Metrics,
    ObsNorm,
    Stage,
    TwinCriticGuidance,
    hookimpl,
    obs_norm_enabled,
)
from modzoo.blocks.nets import FourierFeatures, mlp
from modzoo.blocks.policy import BehaviourFirstPolicy
from modzoo.blocks.sde import VPSDE, VPSDEDiffusion
from modzoo.blocks.utils import load_optim_state, make_optimizer, optim_state
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("qgpo.yaml")

#: ``guide(x_t, t, obs) -> eps``, the hook :meth:`VPSDEDiffusion.sample` calls instead of the denoiser
Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cep_loss(f: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """Contrastive energy prediction: the cross-entropy of softmax(f) against the soft labels softmax(beta Q)
    over each state's K support actions, summed over actions and averaged over states. ``f``, ``q``: (B, K).

    Its minimizer over free logits is f = beta Q + c(s), which is what makes grad f the exact guidance."""
    p = torch.softmax(beta * q.detach(), dim=1)
    return -(p * torch.log_softmax(f, dim=1)).sum(1).mean()


def guided_eps(eps: torch.Tensor, sigma: torch.Tensor, grad_f: torch.Tensor, scale: float) -> torch.Tensor:
    """eps - s sigma_t grad f (``sigma``: (B,)): the eps of the score grad log mu_t + s grad f."""
    return eps - scale * sigma[:, None] * grad_f


def softmax_value(q: torch.Tensor, q_alpha: float) -> torch.Tensor:
    """sum_j softmax_j(q_alpha q_j) q_j over the last dim (QGPO's next-state value, ``model.py:157-158``): a soft
    maximum of the support actions' Q, the mean at q_alpha 0 and the maximum as q_alpha grows. (B, K) -> (B,)."""
    return (torch.softmax(q_alpha * q, dim=-1) * q).sum(-1)


class EnergyNet(nn.Module):
    """f_phi(x_t, t, s): [x_t, Linear(GaussianFourier_30(t)), s] -> MLP -> a scalar (the authors' GuidanceQt)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int] | tuple[int, ...] = (256, 256, 256, 256),
                 t_dim: int = 32, act: str = "silu", obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim) if obs_norm else None
        self.time_enc = nn.Sequential(FourierFeatures(t_dim, std=30.0, learnable=False), nn.Linear(t_dim, t_dim))
        self.net = mlp(act_dim + t_dim + obs_dim, list(hidden), 1, act=act)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """(B,) energies of (B, A) noisy actions at times ``t`` (B,)."""
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.net(torch.cat([x, self.time_enc(t), obs], dim=-1)).squeeze(-1)


def energy_grad(energy: nn.Module, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """grad_x sum f(x, t, obs), detached, whatever the caller's autograd mode.

    Acting runs under ``torch.inference_mode`` (the trainer's evaluation, ``DDPMPolicy.act``), where no graph can be
    recorded: the gradient is taken outside it, on clones, which turn inference tensors into normal ones. It is
    ``torch.func.grad``, not ``autograd.grad``, so that it also runs inside the stacked trainer's vmapped step (a
    policy-dependent critic's TD target samples this policy there) and ignores an enclosing ``no_grad``."""
    with torch.inference_mode(False):
        t, obs = t.detach().clone(), obs.detach().clone()
        g = torch.func.grad(lambda xg: energy(xg, t, obs).sum())(x.detach().clone())
    return g.detach()


def energy_guide(model: nn.Module, sde: VPSDE, energy: nn.Module, scale: float) -> Guide:
    """The guided eps of QGPO's sampler (the authors' ``forward_dmp_wrapper_fn``) around a denoiser ``model``:
    one denoiser call and one energy gradient per solver call."""

    def guide(x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        eps = model(x, t, obs)
        return guided_eps(eps, sde.alpha_sigma(t)[1], energy_grad(energy, x, t, obs), scale)

    return guide


class QGPOPolicy(BehaviourFirstPolicy):
    """Behaviour VP-SDE diffusion guided by the gradient of a CEP-trained energy model; one sample per state.

    ``self.diffusion`` is the behaviour model, ``self.energy`` the intermediate energy f_phi(x_t, t, s)."""

    needs = frozenset({"q"})
    uses_guidance_in_training = True
    # Both stages draw every random number (t, eps, the support sampler's x_1) through modzoo.contract.rng, update()
    # is DDPMPolicy's run_stages(stages()), and the energy gradient is torch.func.grad, which also runs inside the
    # vmapped step (modzoo.testing's stacked check passes, with dql's TD target sampling the guided chain).
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        if not isinstance(self.diffusion, VPSDEDiffusion):
            raise ValueError("qgpo's behaviour model is the continuous-time VP SDE (its energy is a function of "
                             "real t): set policy.noise_schedule=vp_sde")
        self.energy = EnergyNet(obs_dim, act_dim, cfg["energy_hidden"], t_dim=int(cfg["energy_t_dim"]),
                                act=cfg["energy_activation"], obs_norm=obs_norm_enabled(cfg))
        self.energy_opt = make_optimizer(self.energy.parameters(), cfg["optimizer"], cfg["energy_lr"],
                                         cfg["weight_decay"])
        if int(cfg["support_actions"]) < 2:
            raise ValueError("qgpo: support_actions must be at least 2 (CEP contrasts a state's support actions)")
        self.require("beta", "guidance_scale", "support_actions", "support_steps", "energy_batch_size")

    # ---- the two stages ---------------------------------------------------------------------------------------
    def support_actions(self, obs: torch.Tensor, k: int) -> torch.Tensor:
        """K unguided samples of the behaviour model per state, (B, K, A): the authors' support action set,
        drawn with the acting solver (guidance scale 0) from the model named by ``act_model``."""
        diffusion = self.ema_diffusion if self.cfg["act_model"] == "ema" else self.diffusion
        was = diffusion.training
        diffusion.eval()
        with torch.no_grad():
            a = diffusion.sample(obs.repeat_interleave(k, dim=0), generator=self.gen(),
                                 steps=int(self.cfg["support_steps"]))
        diffusion.train(was)
        return a.reshape(obs.shape[0], k, self.act_dim)

    def energy_loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        """CEP on the batch's first ``energy_batch_size`` states: one t per state, shared by its K actions."""
        if guidance is None:
            raise RuntimeError("qgpo's energy model learns from a guidance's Q of its support actions; pass one")
        obs = batch["observations"][: int(self.cfg["energy_batch_size"])]
        b, k, dev = obs.shape[0], int(self.cfg["support_actions"]), obs.device
        support = self.support_actions(obs, k).reshape(b * k, self.act_dim)
        rep = obs.repeat_interleave(k, dim=0)
        with torch.no_grad():
            q = guidance.q(rep, support).reshape(b, k)
            q_data = guidance.q(obs, batch["actions"][:b]).mean()  # diagnostic: the dataset's actions, same states
        t_min = self.diffusion.t_min
        t = (t_min + (1.0 - t_min) * rng.rand((b,), self.gen(), dev)).repeat_interleave(k)
        x_t = self.diffusion.perturb(support, t, rng.randn(support.shape, self.gen(), dev))
        f = self.energy(x_t, t, rep).reshape(b, k)
        beta = float(self.cfg["beta"])
        loss = cep_loss(f, q, beta)
        return loss, {"cep_loss": loss.detach(), "q_support": q.mean(), "q_support_std": q.std(1).mean(),
                      "q_data": q_data, "label_max": torch.softmax(beta * q, 1).max(1).values.mean()}

    def second_stage(self) -> Stage:
        """The energy model alone, at a constant LR (the authors' Adam)."""
        return Stage("energy", self.energy, self.energy_loss, self.energy_opt, None,
                     float(self.cfg["grad_norm"] or 0.0))

    # ---- sampling ---------------------------------------------------------------------------------------------
    def sampling_guide(self, diffusion: VPSDEDiffusion, obs: torch.Tensor) -> Guide | None:
        """The energy-guided eps at ``guidance_scale``; None (the plain denoiser, the same numbers) at 0."""
        scale = float(self.cfg["guidance_scale"])
        if scale == 0:
            return None
        return energy_guide(diffusion.model, diffusion.sde, self.energy, scale)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "energy": optim_state(self.energy_opt)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        load_optim_state(state.get("energy", {}), self.energy_opt)


class QGPOGuidance(TwinCriticGuidance):
    """QGPO's in-support softmax Q-learning: twin Q bootstrapped from a softmax over behaviour samples (joint only).

    The TD target's next-state value is :func:`softmax_value` of the target twin's minimum over ``support_actions``
    samples of the policy's behaviour model at s' (:meth:`QGPOPolicy.support_actions`, unguided; any other policy's
    ``sample``). ``q`` (what the energy labels and any ranking read) is the target twin's minimum, as the authors'
    ``q0_target`` forward."""

    # every draw is the policy's (its support sampler goes through modzoo.contract.rng), and the update is the
    # base's one critic stage
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        if int(cfg["support_actions"]) < 1:
            raise ValueError("qgpo guidance: support_actions must be at least 1")
        self.require("q_alpha")

    @property
    def requires_policy(self) -> bool:
        """The next-state support actions are the policy's behaviour samples: joint training only."""
        return True

    def next_support(self, next_obs: torch.Tensor, policy: DiffusionPolicy) -> torch.Tensor:
        """K behaviour actions per next state, (B, K, A): QGPO's unguided support sampler when the policy is
        QGPO's (the authors' ``fake_a_``), otherwise the policy's own ``sample`` candidates."""
        k = int(self.cfg["support_actions"])
        if isinstance(policy, QGPOPolicy):
            return policy.support_actions(next_obs, k)
        return policy.sample(next_obs, k)

    def td_target(self, batch: Batch, policy: DiffusionPolicy | None = None) -> torch.Tensor:
        if policy is None:
            raise RuntimeError("qgpo guidance bootstraps from the policy's behaviour samples: joint training only")
        nxt = batch["next_observations"]
        b = nxt.shape[0]
        support = self.next_support(nxt, policy)
        k = support.shape[1]
        qn = self.critic_target(nxt.repeat_interleave(k, 0), support.reshape(b * k, -1)).min(0).values
        next_v = softmax_value(qn.reshape(b, k), float(self.cfg["q_alpha"]))
        return self.rewards(batch) + self.gamma * (1 - batch["terminals"]) * next_v


@hookimpl
def modzoo_guidances() -> list[HalfSpec]:
    return [HalfSpec("qgpo", QGPOGuidance, CONFIG, paper="Lu et al. 2023 (QGPO), arXiv:2304.12824")]


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("qgpo", QGPOPolicy, CONFIG, paper="Lu et al. 2023 (QGPO), arXiv:2304.12824")]
