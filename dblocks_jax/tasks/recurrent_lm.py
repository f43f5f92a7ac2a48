"""Recurrent-depth language model (paper sec. 4.5, Table 5): a prelude, one core
iterated K times, a coda (`models.recurrent_lm`), trained two ways from the same code.

`recurrent.method = "huginn"` (the baseline, Geiping et al. 2025): each step draws
K = 1 + Poisson(exp(tau)), tau ~ N(ln(mean - 1) - s^2/2, s^2) (Huginn's Poisson-log-normal law;
E[K] = `mean_steps`), starts the state from N(0, state_std^2), runs K - k iterations without
gradient and the last k = min(K, `backprop_steps`) with it (truncated backpropagation), and trains
next-token cross-entropy on the coda's read of s_K.

`recurrent.method = "diffusion"` (DiffusionBlocks with B = 1): each step runs the core *once*, as
EDM's denoiser of a noisy clean state z = y + sigma eps with sigma from EDM's log-normal law, and
trains CE(coda(D(z, sigma)), next token) lambda(sigma) (lambda: EDM's weight, as the other
embedding-target tasks). What the clean state y is, the paper leaves implicit
(docs/architecture.md, "The recurrent-depth task"); `recurrent.target`:
- `token`: the next token's row of a learned table, L2-normalised;
- `prelude`: the prelude's own output at the next position (it has read the next token and its
  context), without gradient, normalised the same way.
Both are scaled to norm sigma_data sqrt(width) (per-coordinate RMS sigma_data, the data scale
EDM's preconditioning and level law are built for).

Inference, both methods: K core calls from noise at test time (`predict`): Huginn's K iterations,
or DiffusionBlocks' chain of K levels sigma_max ... sigma_min on the engine's `make_chain` (an
Euler step towards D at each level but the last, whose D the coda reads; K = 1: one call at
sigma_max).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dblocks_jax.engine.chain import level_grid, make_chain, stack_blocks
from dblocks_jax.engine.settings import ASSEMBLY, IDENTITY, SAMPLING, Section, require, setting
from dblocks_jax.engine.solvers import euler_step
from dblocks_jax.models.recurrent_lm import RecurrentLM as Network
from dblocks_jax.models.vit import normalized_rows
from dblocks_jax.tasks import flags
from dblocks_jax.tasks.base import Inference
from dblocks_jax.tasks.edm_task import EDMTask
from dblocks_jax.tasks.plugin import Flag, Preset, Request, int_list
from dblocks_jax.tasks.recurrent_depth import mixture, poisson_lognormal_steps
from dblocks_jax.tasks.text_task import GENERATION_RENAMES, LM1B, PYDOC_CPU, GenerationConfig, TextConfig, TextTask

METHODS = ("diffusion", "huginn")
MAX_ITERATIONS = 1024  # of the core per training step or per prediction (Huginn's paper trains at a mean of 32)
TARGETS = ("token", "prelude")
WEIGHTINGS = ("edm", "none")


@dataclasses.dataclass(frozen=True)
class RecurrentConfig(Section):
    """Prelude, a core iterated K times, coda. `method`: "huginn" trains with K ~
    Poisson-log-normal iterations from noise and backpropagates through the last `backprop_steps`;
    "diffusion" (DiffusionBlocks, B = 1) trains one core pass on a noisy target state."""

    _path = "recurrent"
    method: str = setting("diffusion", ASSEMBLY, ", ".join(METHODS))
    prelude: int = setting(2, ASSEMBLY, "prelude layers")
    core: int = setting(4, ASSEMBLY, "core layers (iterated)")
    coda: int = setting(2, ASSEMBLY, "coda layers")
    target: str = setting("token", ASSEMBLY, "diffusion's clean state: token (the next token's row of a learned "
                                             "table) or prelude (the prelude's output at the next position, without "
                                             "gradient); both normalised to RMS noise.sigma_data")
    weighting: str = setting("edm", IDENTITY, "diffusion: the cross-entropy's weight over sigma, edm (lambda(sigma), "
                                              "Karras et al. eq. 8) or none")
    mean_steps: float = setting(32.0, IDENTITY, "huginn: mean of the training iterations K")
    steps_sigma: float = setting(0.5, IDENTITY, "huginn: std of log-rate of K's Poisson-log-normal law")
    backprop_steps: int = setting(8, IDENTITY, "huginn: iterations backpropagated through (the last ones)")
    state_std: float = setting(0.63, IDENTITY, "huginn: std of the starting state s_0")
    steps: int = setting(32, SAMPLING, "core iterations at inference (K; diffusion: network calls of the chain)")
    mc_draws: int = setting(8, SAMPLING, "starting noises whose predictions are mixed into the likelihood (both "
                                        "methods, every K)")

    def check(self):
        require(self.method in METHODS, self.field("method"), self.method, ", ".join(METHODS))
        require(self.target in TARGETS, self.field("target"), self.target, ", ".join(TARGETS))
        require(self.weighting in WEIGHTINGS, self.field("weighting"), self.weighting, ", ".join(WEIGHTINGS))
        for name in ("prelude", "core", "coda", "backprop_steps", "steps", "mc_draws"):
            require(getattr(self, name) >= 1, self.field(name), getattr(self, name), "an integer >= 1")
        # Bounded: every training step iterates the core about mean_steps times, every inference K times.
        require(2 <= self.mean_steps <= MAX_ITERATIONS, self.field("mean_steps"), self.mean_steps,
                f"a number in [2, {MAX_ITERATIONS}] (K = 1 + Poisson; each training step runs about this many core "
                f"iterations)")
        require(self.steps <= MAX_ITERATIONS, self.field("steps"), self.steps, f"an integer in [1, {MAX_ITERATIONS}]")
        require(self.backprop_steps <= MAX_ITERATIONS, self.field("backprop_steps"), self.backprop_steps,
                f"an integer in [1, {MAX_ITERATIONS}]")
        require(self.steps_sigma > 0, self.field("steps_sigma"), self.steps_sigma, "a number > 0")
        require(self.state_std > 0, self.field("state_std"), self.state_std, "a number > 0")


# Huginn's layout (the paper's Table 5 model: hidden 512, 8 heads, prelude/core/coda 2/4/2 on LM1B). The
# CPU preset keeps the layout at width 64 and the AR presets' data, so that a plain autoregressive run
# of pydoc_ar can score its generations. The noise law is centred at ln sigma = 3.5, not EDM's image
# value -1.2: at B = 1 the core sees the whole law, and below sigma ~ 2 the next token can be read
# from z (docs/architecture.md).
_RECURRENT = {"model.num_layers": 8, "model.num_blocks": 1, "model.positions": "rope", "optim.ema_decay": 0.0,
              "noise.p_mean": 3.5}
PRESETS = (
    Preset("pydoc_recurrent", "recurrent-depth LM (prelude 2, core 4 iterated, coda 2) trained with DiffusionBlocks "
                              "(B = 1) on Python's bundled pydoc text: a 2-core CPU, minutes (--set "
                              "recurrent.method=huginn: the Huginn baseline)", {
        **_RECURRENT, **PYDOC_CPU, "optim.steps": 1200, "text.eval_sequences": 256}),
    Preset("lm1b_recurrent", "the paper's Table 5 setting: hidden 512, 8 heads, prelude/core/coda 2/4/2 on tfds:lm1b "
                             "(bytes), for GPU/TPU", {
        **_RECURRENT, **LM1B, "model.width": 512, "model.num_heads": 8, "optim.learning_rate": 3e-4,
        "optim.warmup_steps": 2500, "optim.steps": 250_000}),
)
FLAGS = (
    flags.NUM_SAMPLES, flags.GRID, flags.PROMPT, flags.LENGTH, flags.REFERENCE,
    Flag("--mc", ("evaluate",), "recurrent.mc_draws: starting noises per symbol mixed into the likelihood", int,
         field="recurrent.mc_draws"),
    Flag("--steps", ("sample",), "recurrent.steps: core iterations K", int, field="recurrent.steps"),
    Flag("--steps", ("evaluate",), "core iterations K, comma-separated (default: 1,2,4,8,16,32)"),
)


# The fields only one method reads: a non-default value under the other method is refused.
HUGINN_FIELDS = ("mean_steps", "steps_sigma", "backprop_steps", "state_std")
DIFFUSION_FIELDS = ("target", "weighting")


class RecurrentLM(TextTask, EDMTask):
    name = "recurrent_lm"
    description = "recurrent-depth LM (Huginn; paper Table 5): bits per character against test-time depth K"
    sections = (TextConfig, RecurrentConfig, GenerationConfig)
    renamed_fields = GENERATION_RENAMES
    presets = PRESETS
    flags = FLAGS
    sample_formats = (".txt",)
    # B = 1: one band covers the law, so the partition has nothing to choose.
    unused_fields = TextTask.unused_fields + ("sampling.steps", "model.dropout", "model.layer_split", "text.mask_eps",
                                              "text.eval_draws", "partition.strategy", "partition.overlap")

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        m, r = config.model, config.recurrent
        require(m.num_blocks == 1, "model.num_blocks", m.num_blocks,
                "1 (recurrent depth trains one core: DiffusionBlocks with B = 1)")
        require(m.num_layers == r.prelude + r.core + r.coda, "model.num_layers", m.num_layers,
                f"recurrent.prelude + core + coda = {r.prelude + r.core + r.coda}")
        require(m.positions == "rope", "model.positions", m.positions,
                "rope (the core is iterated; positions enter every attention)")
        cls.require_generation_fits(config)
        defaults = type(r)()
        other = HUGINN_FIELDS if r.method == "diffusion" else DIFFUSION_FIELDS
        for name in other:
            require(getattr(r, name) == getattr(defaults, name), f"recurrent.{name}", getattr(r, name),
                    f"{getattr(defaults, name)!r}, its default: recurrent.method={r.method} does not use it")
        if r.method == "huginn":
            require(config.sampling.grid == type(config.sampling)().grid, "sampling.grid", config.sampling.grid,
                    f"{type(config.sampling)().grid!r}, its default: Huginn's iterations have no level grid")

    def __init__(self, config):
        super().__init__(config)
        self._predictors: dict[tuple, object] = {}

    @property
    def diffusion(self) -> bool:
        return self.config.recurrent.method == "diffusion"

    def make_block(self, rngs: nnx.Rngs) -> Network:
        m, r = self.config.model, self.config.recurrent
        return Network(vocab_size=self.vocab_size, width=m.width, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                       prelude=r.prelude, core=r.core, coda=r.coda, diffusion=self.diffusion,
                       target_table=r.target == "token",
                       **m.stack_options, rngs=rngs)

    # -- training -----------------------------------------------------------------------------------

    def draw(self, key, block, batch_spec) -> dict:
        """Diffusion: one sigma per sequence and the noise on the states. Huginn: the starting
        state and K (one per step, repeated per example so that a data-parallel slice keeps it)."""
        n, length = batch_spec["tokens"].shape
        k_level, k_noise = jax.random.split(key)
        noise = jax.random.normal(k_noise, (n, length - 1, self.config.model.width), jnp.float32)
        if self.diffusion:
            return {"sigma": self.partition.sample_level(k_level, block, (n,)), "eps": noise}
        r = self.config.recurrent
        steps = poisson_lognormal_steps(k_level, r.mean_steps, r.steps_sigma)
        return {"s0": r.state_std * noise, "steps": jnp.full((n,), steps, jnp.int32)}

    def clean_state(self, net: Network, e_BLD: jax.Array, targets_BT: jax.Array) -> jax.Array:
        """y: the state the core learns to reach at each position (see the module docstring)."""
        if self.config.recurrent.target == "token":
            rows_BTD = net.table()[targets_BT]
        else:
            rows_BTD = normalized_rows(jax.lax.stop_gradient(e_BLD[:, 1:]).astype(jnp.float32))
        return self.config.noise.sigma_data * math.sqrt(self.config.model.width) * rows_BTD

    def loss(self, params, batch, draw, block) -> jax.Array:
        """Per sequence, the mean over positions of next-token cross-entropy (times lambda(sigma)
        for the diffusion method)."""
        tokens_BL = batch["tokens"]
        targets_BT = tokens_BL[:, 1:]
        net = self.network(params)
        e_BLD = net.encode(tokens_BL)  # causal: positions < L - 1 are the inputs' encodings
        e_BTD = e_BLD[:, :-1]
        if not self.diffusion:
            s_BTD = self.truncated_iterations(params, draw["s0"], e_BTD, draw["steps"][0])
            return optax.softmax_cross_entropy_with_integer_labels(net.logits(s_BTD), targets_BT).mean(-1)
        sigma_B = draw["sigma"]
        z_BTD = self.clean_state(net, e_BLD, targets_BT) + sigma_B[:, None, None] * draw["eps"]
        d_BTD = net.denoise(z_BTD, sigma_B, e_BTD, self.edm.scalings)
        ce_B = optax.softmax_cross_entropy_with_integer_labels(net.logits(d_BTD), targets_BT).mean(-1)
        return ce_B * self.edm.loss_weight(sigma_B) if self.config.recurrent.weighting == "edm" else ce_B

    # Set False (`training_flops` does) to leave out the iterations without gradient: XLA's cost
    # analysis counts a while loop's body once, whatever its trip count, so they are counted apart.
    free_iterations = True

    def truncated_iterations(self, params, s0_BTD, e_BTD, steps) -> jax.Array:
        """Huginn's training forward: K - k iterations without gradient, then the last
        k = min(K, backprop_steps) with it. The gradient part always runs `backprop_steps` bodies
        (a fixed-length scan, unrolled when model.scan_layers is off) and keeps the state where
        an iteration is not due (K < backprop_steps)."""
        bp = self.config.recurrent.backprop_steps
        k = jnp.minimum(steps, bp)
        s_BTD = s0_BTD
        if self.free_iterations:
            frozen, e_free = jax.lax.stop_gradient(params), jax.lax.stop_gradient(e_BTD)
            s_free = jax.lax.fori_loop(0, steps - k, lambda _, s: self.network(frozen).iterate(s, e_free),
                                       jax.lax.stop_gradient(s_BTD))
            # Whatever came before the last k iterations gets no gradient; with none before, s_0 does.
            s_BTD = jnp.where(steps > k, jax.lax.stop_gradient(s_free), s_BTD)

        def body(s, j):
            return jnp.where(j >= bp - k, self.network(params).iterate(s, e_BTD), s), None

        if self.config.model.scan_layers:
            return jax.lax.scan(body, s_BTD, jnp.arange(bp))[0]
        for j in range(bp):
            s_BTD = body(s_BTD, j)[0]
        return s_BTD

    # -- inference ----------------------------------------------------------------------------------

    def grid(self, steps: int) -> np.ndarray:
        """The chain's K levels, sigma_max ... sigma_min (`sampling.grid`); K = 1: sigma_max."""
        return np.array([self.edm.sigma_max]) if steps == 1 else level_grid(self.config.sampling.grid, steps - 1,
                                                                             self.law)

    def predictor(self, steps: int):
        """`run(params, tokens_NT, key) -> logits (N, T, V)` of the K = `steps` model (jitted,
        cached per K): the next-token logits at every position, from one draw of the starting noise."""
        key_ = ("predict", steps)
        if key_ in self._predictors:
            return self._predictors[key_]
        if self.diffusion:
            chain = self._chain(steps)

            def run(params, tokens_NT, key):
                e_NTD = self.network(params).encode(tokens_NT)
                z0_NTD = self.edm.sigma_max * jax.random.normal(key, e_NTD.shape, jnp.float32)
                return chain(stack_blocks([params]), z0_NTD, e_NTD, key)
        else:
            def run(params, tokens_NT, key):
                net = self.network(params)
                e_NTD = net.encode(tokens_NT)
                s0_NTD = self.config.recurrent.state_std * jax.random.normal(key, e_NTD.shape, jnp.float32)
                iterate = lambda _, s: self.network(params).iterate(s, e_NTD)  # merged in the loop's own trace
                return net.logits(jax.lax.fori_loop(0, steps, iterate, s0_NTD))

        self._predictors[key_] = jax.jit(run)
        return self._predictors[key_]

    def _chain(self, steps: int):
        """The engine's chain over K levels: `cond` is the prelude's output e."""
        def denoised(params_at, z_NTD, e_NTD, t, b):
            return self.network(params_at(b)).denoise(z_NTD, jnp.full(z_NTD.shape[:1], t), e_NTD, self.edm.scalings)

        def step(params_at, z_NTD, e_NTD, t, t_next, b, b_next, _):
            return euler_step(z_NTD, denoised(params_at, z_NTD, e_NTD, t, b), t, t_next)

        def read_out(params_at, z_NTD, e_NTD, t, b):
            return self.network(params_at(b)).logits(denoised(params_at, z_NTD, e_NTD, t, b))

        return make_chain(step, read_out, self.partition, self.grid(steps))

    @functools.cached_property
    def _draw_log_probs(self):
        """jit(params, tokens, targets, keys (M,), steps) -> log p_m(target) (M, N, T), one row per
        starting noise."""
        def run(params, tokens_NT, targets_NT, keys_M, steps):
            def one(key):
                logp = jax.nn.log_softmax(self.predictor(steps)(params, tokens_NT, key))
                return jnp.take_along_axis(logp, targets_NT[..., None], -1)[..., 0]

            return jax.lax.map(one, keys_M)

        return jax.jit(run, static_argnums=4)

    def draw_log_probs(self, params, windows_NL, steps: int, key, draws: int = 1) -> jax.Array:
        """log p_m(x_{i+1} | x_{<=i}) (M, N, L - 1) under the K-step model for `draws` starting noises
        m. Both methods' K-step logits depend on the starting noise (Huginn's s_0, the chain's z_0),
        so the model's predictive is the mixture over it: logsumexp over m, minus log M (a
        DiffusionBlocks chain of K >= 2 ends on a sample, which makes the mixture matter most)."""
        windows_NL = jnp.asarray(windows_NL)
        self.predictor(steps)  # built outside the trace: the chain's grid arrays are constants
        return self._draw_log_probs(params, windows_NL[:, :-1], windows_NL[:, 1:], jax.random.split(key, draws),
                                    steps)

    def log_predictive(self, params, windows_NL, steps: int, key, draws: int = 1) -> jax.Array:
        """log of the mixture predictive (N, L - 1) over `draws` starting noises."""
        return mixture(self.draw_log_probs(params, windows_NL, steps, key, draws))

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        """bpc.json (held-out bits per character at K = recurrent.steps) and samples.txt."""
        from dblocks_jax.tasks.recurrent_lm_eval import write_run_artifacts

        write_run_artifacts(self, workdir, block_params)

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference:
        """Next-symbol predictions at every position of `batch` windows with K = `steps` core calls."""
        tokens_NT = jnp.zeros((batch, self.config.text.seq_len - 1), jnp.int32)
        return Inference(self.predictor(steps), (block_params[0], tokens_NT, jax.random.key(0)),
                         batch * tokens_NT.shape[1], "predictions", steps)

    # -- the shell's hooks ----------------------------------------------------------------------------

    @classmethod
    def workdir_suffix(cls, config) -> str:
        return f"_recurrent_{config.recurrent.method}"

    @classmethod
    def work_estimate(cls, config) -> str | None:
        r = config.recurrent
        if r.method == "diffusion":
            return "diffusion: one core pass per training step"
        return (f"huginn: each training step iterates the core K = 1 + Poisson times, {r.mean_steps:g} on average "
                f"(the last min(K, {r.backprop_steps}) with gradient): about {r.mean_steps:g} core passes per step "
                f"where the diffusion method makes one")

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        path = os.path.join(workdir, "bpc.json")
        with open(path) as f:
            r = json.load(f)
        by_k = ", ".join(f"K={k}: {v['bpc']['mean']:.4f}" for k, v in r["bpc_by_steps"].items())
        return [f"held-out bits per character ({r['method']}) {by_k} -> {path}; samples: "
                f"{os.path.join(workdir, 'samples.txt')}"]

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        from dblocks_jax.tasks.recurrent_lm_eval import STEPS, evaluate_run

        steps = request.option("steps")
        steps = int_list("--steps", steps) if steps else STEPS
        if min(steps) < 1 or max(steps) > MAX_ITERATIONS:
            raise ValueError(f"--steps {request.option('steps')}; allowed: integers in [1, {MAX_ITERATIONS}] (core "
                             f"iterations)")
        return evaluate_run(request, steps=steps, reference=request.option("reference"))

    @classmethod
    def report(cls, result: dict) -> list[str]:
        from dblocks_jax.tasks.recurrent_lm_eval import report

        return report(result)

    @classmethod
    def write_samples(cls, request: Request) -> list[str]:
        from dblocks_jax.tasks.autoregressive_lm_eval import write_samples
        from dblocks_jax.tasks.recurrent_lm_eval import continuations

        def generate(task, params, count, seed, prompts_NP):
            return continuations(task, params[0], count, task.config.recurrent.steps, seed=seed, prompts_NP=prompts_NP)

        def explain(task):
            return f"{task.config.recurrent.method}, K = {task.config.recurrent.steps} core iterations per symbol"

        return write_samples(request, generate, explain)
