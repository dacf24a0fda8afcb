"""SwarmConfig: every knob of the search, validated and documented. Each default is the authors' reference
code's (the values their run scripts set instead are named in the descriptions); batch_size and the
execution fields are swarmkern's own."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What `update: classic` sets when the config does not name the field (x <- x + v, no decay, no repel,
# per-element factors); a conflicting explicit value of the last two is an error.
_CLASSIC_DEFAULTS = {"step": 1.0, "step_factor": 1.0, "repel": False, "randomness": "element"}


class SwarmConfig(BaseModel):
    """Hyperparameters of one Model Swarms search (see docs/ALGORITHM.md; defaults follow the
    authors' reference code, the paper's variants are options). Frozen: derive changed copies with
    `config.model_copy(update={...})`."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- population ---------------------------------------------------------------------------
    n_particles: int | None = Field(None, ge=2, description=(
        "Populate the swarm by crossover to this many particles. None (the reference code's default, "
        "populate off): the experts (and the base, with include_base) are the particles. The authors' "
        "run scripts populate 10 experts to 20."))
    crossover_weight: tuple[float, float] = Field((0.0, 2.0), description=(
        "Range of w1 for children w1*a + (1-w1)*b: (0, 2) is half interpolation, half extrapolation."))
    include_base: bool = Field(False, description=(
        "Add the base model itself as a particle (an all-zero expert: LoRA adapters only make sense "
        "here). Lets the swarm leave the affine hull of the experts (see docs/LESSONS.md). For LoRA, mixing "
        "with a zero particle scales lora_A and lora_B together (B.A scales quadratically); when the "
        "experts share one LoRA initialisation, listing an adapter with that lora_A and lora_B = 0 as an "
        "expert (also exactly the base model) mixes more linearly (the demo does so)."))
    velocity_init: Literal["random", "zero", "best"] = Field("random", description=(
        "random: v_i = x_j - x_i for a random j != i; zero; best: v_i = g - x_i after the first "
        "evaluation."))

    # -- the update -----------------------------------------------------------------------------
    update: Literal["model_swarms", "classic"] = Field("model_swarms", description=(
        "model_swarms: the paper's rule (random factors on all four terms, normalised by their sum, "
        "repel, decaying step; for expert pools). classic: textbook global-best PSO "
        "v <- phi_v*v + r1*phi_p*(pbest - x) + r2*phi_g*(gbest - x), x <- x + v, with per-element r1, r2 ~ "
        "U(r_range), a constant inertia phi_v (no random factor), no normalisation and no repel (for "
        "benchmark functions; pyswarms' GlobalBestPSO with w=phi_v, c1=phi_p, c2=phi_g). It sets step 1, "
        "step_factor 1, repel false and randomness element unless the config names them."))
    bounds: tuple[float, float] | None = Field(None, description=(
        "Position bounds (lo, hi): every coordinate is clipped into [lo, hi] after each update (the "
        "velocity is kept). None: unbounded (as pyswarms without bounds)."))
    phi_v: float = Field(0.4, ge=0, description="Inertia weight.")
    phi_p: float = Field(0.3, ge=0, description="Cognitive weight (pull to the personal best).")
    phi_g: float = Field(0.3, ge=0, description="Social weight (pull to the global best).")
    phi_w: float = Field(0.3, ge=0, description="Repel weight (push away from the global worst).")
    repel: bool = Field(True, description="Use the repel term (off: its weight is 0).")
    randomness: Literal["particle", "element", "off"] = Field("particle", description=(
        "particle: four factors r ~ U(r_range) per particle per iteration, shared by all its weights "
        "(reference); element: independent factors per weight (classic PSO, drawn inside the kernel); "
        "off: all factors 1."))
    r_range: tuple[float, float] = Field((0.0, 1.0), description="Range of the random factors r.")
    step: float = Field(1.0, gt=0, description="Initial step length lambda: x <- x + lambda * v.")
    step_factor: float = Field(0.95, gt=0, description="lambda <- max(lambda * step_factor, min_step) after each iteration.")
    min_step: float = Field(0.1, ge=0, description="Floor of the step length.")

    # -- stopping and restarts ------------------------------------------------------------------
    max_iters: int = Field(200, ge=0, description="Stop after this many iterations (paper text: 50).")
    patience: int = Field(10, ge=1, description="Stop when the global best utility has not changed for this long.")
    patience_mode: Literal["reference", "iterations"] = Field("reference", description=(
        "reference: stop when the last `patience` recorded global-best utilities (initial one "
        "included) are equal, i.e. after patience-1 iterations without change (the reference code); "
        "iterations: after `patience` iterations without change (the paper's wording)."))
    restart: bool = Field(True, description="Restart stray particles: x <- pbest, v <- 0.")
    restart_patience: float = Field(0.67, gt=0, description=(
        "A particle restarts (before its update) once its personal best is restart_patience * "
        "patience evaluations old, counting the evaluation that found it (reference code); it keeps "
        "restarting each iteration until it improves."))

    # -- speed ------------------------------------------------------------------------------------
    drop_k: float = Field(0.0, ge=0, le=1, description="dropK: probability of skipping a whole iteration's evaluation.")
    drop_n: float = Field(0.0, ge=0, le=1, description="dropN: probability of skipping one particle's evaluation.")
    batch_size: int | None = Field(None, ge=1, description="Most particles per utility call (None: all at once).")

    # -- reports at the end of a search (swarmkern/swarm/reports.py; reports.json) ---------------------
    report_pbest_test: bool = Field(False, description=(
        "Score every final personal best on the test utility (costs P test evaluations)."))
    report_ensemble_k: tuple[int, ...] = Field((3, 5, 10), description=(
        "Top-k prediction ensembles of the final personal bests (best dev utility first), on dev and "
        "test, for each k <= P; needs a utility with the ensemble capability; () turns them off. Costs "
        "max(k) dev and max(k) test predictions (one call each)."))
    report_emergence: bool = Field(True, description=(
        "Correctness emergence: the dev/test examples that no starting particle got right but the final "
        "global best does (needs 0/1 per-example scores; costs P + 1 dev and P + 1 test predictions, "
        "the starting particles rebuilt in batches of batch_size)."))
    report_trajectory: bool = Field(True, description=(
        "Record every particle's position projected on the first two principal directions of the "
        "starting experts in history.jsonl (pca_xy) and plot them as trajectory.png."))

    # -- execution --------------------------------------------------------------------------------
    seed: int = Field(0, ge=0, lt=2 ** 64, description="Key of every random draw (Philox counter-based).")
    backend: str | None = Field(None, description="Kernel backend for ops.pso_step_ (None: fastest available).")
    device: str = Field("cpu", description="Device of the swarm buffers (cpu, cuda, cuda:1, ...).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "Storage dtype of the swarm buffers (math is fp32): auto = the experts' own float dtype."))
    storage: Literal["memory", "mmap"] = Field("memory", description=(
        "Where x, v and the personal bests live: memory (on `device`), or mmap: memory-mapped files in "
        "the output directory (buffers/), walked in column blocks, so the swarm may exceed RAM (CPU only; "
        "docs/SCALE.md)."))
    block_size: int | None = Field(None, ge=1, description=(
        "Columns per block when the buffers are walked in blocks (storage: mmap). None: about 64 MiB "
        "of each buffer per block. randomness: element always uses one block (its random stream is "
        "keyed by the column)."))
    checkpoint: bool = Field(True, description=(
        "With an output dir: journal every iteration (a fsync'ed record of a few hundred bytes) and write "
        "snapshots of the buffers now and then, so that `resume` continues bit-identically."))
    snapshot_every: int = Field(0, ge=0, description=(
        "Also snapshot every N iterations (0: only by snapshot_seconds / snapshot_budget). Resume replays "
        "the kernel steps of the iterations since the last snapshot."))
    snapshot_seconds: float | None = Field(None, gt=0, description=(
        "Snapshot once this many seconds have passed since the last one (None: by snapshot_budget)."))
    snapshot_budget: float = Field(0.05, gt=0, le=1, description=(
        "Without snapshot_seconds: snapshot once the last snapshot's duration is at most this fraction "
        "of the time since it started, so snapshots take at most about this share of the run. A "
        "snapshot is also written after the initial evaluation and at the end."))
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="before")
    @classmethod
    def _classic_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("update") == "classic":
            data = {**_CLASSIC_DEFAULTS, **data}
        if isinstance(data, dict) and "checkpoint_every" in data:
            # the field of earlier versions (a full checkpoint every N iterations; 0: none): checkpoints are
            # now an O(P) journal record per iteration plus snapshots, so N becomes the snapshot interval
            data = dict(data)
            every = data.pop("checkpoint_every")
            if not isinstance(every, int) or isinstance(every, bool) or every < 0:
                raise ValueError(f"checkpoint_every: expected an integer >= 0, got {every!r} "
                                 "(replaced by checkpoint / snapshot_every)")
            for new in ("checkpoint", "snapshot_every"):
                if new in data:
                    raise ValueError(f"checkpoint_every: give either it (earlier versions) or {new}, not both")
            data.update({"checkpoint": False} if every == 0 else {"snapshot_every": every})
        return data

    @model_validator(mode="after")
    def _check(self) -> "SwarmConfig":
        if self.update == "classic":
            if self.repel:
                raise ValueError("repel: the classic update has no repel term (set repel: false)")
            if self.randomness != "element":
                raise ValueError("randomness: the classic update draws per-element factors (set randomness: element)")
        if any(k < 1 for k in self.report_ensemble_k):
            raise ValueError(f"report_ensemble_k: every k must be >= 1, got {list(self.report_ensemble_k)}")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds: need lo < hi, got {list(self.bounds)}")
        lo, hi = self.r_range
        if not 0 <= lo <= hi:
            raise ValueError(f"r_range: need 0 <= lo <= hi, got {list(self.r_range)}")
        a, b = self.crossover_weight
        if a > b:
            raise ValueError(f"crossover_weight: need lo <= hi, got {list(self.crossover_weight)}")
        if self.min_step > self.step:
            raise ValueError(f"min_step: {self.min_step} is above step {self.step}")
        return self
